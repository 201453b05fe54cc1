import json

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from conf.schema import EvaluationConfig
from g2i_eval.features import (
    FeatureExtractorError,
    InceptionExtractor,
    InDomainExtractor,
    build_extractor,
    extract_features,
    train_in_domain_extractor,
)
from g2i_eval.inception import InceptionV3, split_head_keys
from g2i_eval.metrics import fid_kid
from g2i_models.datasets import SyntheticSliceDataset


def _with_head(state: dict[str, torch.Tensor], classes: int) -> dict[str, torch.Tensor]:
    # Heads are present in real files: 1008 classes in the FID weights, 1000 in torchvision's.
    return {**state, "fc.weight": torch.zeros(classes, 2048), "fc.bias": torch.zeros(classes)}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> str:
    """A random-init Inception-v3 saved in the layout of the FID weights (1008-class head)."""
    torch.manual_seed(0)
    state = _with_head(InceptionV3().state_dict(), 1008)
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pth"
    torch.save(state, path)
    return str(path)


def test_inception_extractor_gives_2048_features(inception_file) -> None:
    extractor = InceptionExtractor(inception_file)
    assert extractor.name == "inception-v3-fid:inception_v3.pth"
    assert extractor.net.pooling == "fid"
    x = torch.rand(2, 1, 64, 64)
    f = extract_features(extractor, x)
    assert f.shape == (2, 2048) and f.dtype == torch.float32
    assert torch.isfinite(f).all()
    extractor.train()  # batch-norm statistics must stay frozen
    assert not extractor.net.training


def test_inception_file_without_batch_counters_loads(tmp_path, inception_file) -> None:
    state = torch.load(inception_file, weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old_style.pth")
    reference = InceptionExtractor(inception_file)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(InceptionExtractor(tmp_path / "old_style.pth")(x), reference(x))


def test_head_picks_the_network(tmp_path, inception_file) -> None:
    """The same trunk with torchvision's 1000-class head runs in torchvision's pooling."""
    state = torch.load(inception_file, weights_only=True)
    torch.save(_with_head(state, 1000), tmp_path / "imagenet.pth")
    tv = InceptionExtractor(tmp_path / "imagenet.pth")
    fid = InceptionExtractor(inception_file)
    assert tv.name == "inception-v3-torchvision:imagenet.pth" and tv.net.pooling == "torchvision"
    x = torch.rand(1, 1, 32, 32)
    assert not torch.allclose(tv(x), fid(x))


@pytest.mark.parametrize("classes", [None, 10])
def test_file_of_unknown_network_is_refused(tmp_path, inception_file, classes) -> None:
    state = torch.load(inception_file, weights_only=True)
    state = _with_head(state, classes) if classes else split_head_keys(state)[0]
    torch.save(state, tmp_path / "headless.pth")
    with pytest.raises(FeatureExtractorError, match="headless.pth.*1008") as err:
        InceptionExtractor(tmp_path / "headless.pth")
    assert "evaluation.inception_weights" in str(err.value)


def test_wrong_shape_is_refused(tmp_path, inception_file) -> None:
    state = torch.load(inception_file, weights_only=True)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 1280, 1, 1)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(FeatureExtractorError, match="wrong shapes 1: Mixed_7c.branch_pool"):
        InceptionExtractor(tmp_path / "reshaped.pth")


def test_missing_inception_file_names_path(tmp_path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(FeatureExtractorError, match="nope.pth") as err:
        InceptionExtractor(path)
    assert "evaluation.inception_weights" in str(err.value)


def test_renamed_keys_are_listed(tmp_path, inception_file) -> None:
    state = torch.load(inception_file, weights_only=True)
    state = {k.replace("Mixed_5b.", "Mixed_5x."): v for k, v in state.items()}
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(FeatureExtractorError, match="renamed.pth") as err:
        InceptionExtractor(path)
    assert "missing keys" in str(err.value) and "Mixed_5b." in str(err.value)
    assert "unexpected keys" in str(err.value) and "Mixed_5x." in str(err.value)


def test_unreadable_inception_file(tmp_path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(FeatureExtractorError, match="garbage.pth"):
        InceptionExtractor(path)


def test_build_inception_requires_weights() -> None:
    with pytest.raises(FeatureExtractorError, match="inception_weights"):
        build_extractor(EvaluationConfig(feature_extractor="inception", inception_weights=""))


def test_unknown_extractor_name() -> None:
    with pytest.raises(ValueError, match="feature_extractor"):
        build_extractor(EvaluationConfig(feature_extractor="clip"))


@pytest.fixture(scope="module")
def train_set() -> SyntheticSliceDataset:
    return SyntheticSliceDataset(n=48, image_size=32)


@pytest.fixture(scope="module")
def trained(train_set) -> InDomainExtractor:
    return train_in_domain_extractor(train_set, epochs=2, seed=3, batch_size=16, progress=False)


def _images(ds: SyntheticSliceDataset, n: int) -> torch.Tensor:
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_in_domain_training_is_recorded_and_seeded(trained, train_set) -> None:
    assert trained.num_features == 128
    record = trained.training_record
    assert record["epochs"] == 2 and record["seed"] == 3 and record["n_train"] == 48
    assert 0.0 <= record["final_train_accuracy"] <= 1.0
    again = train_in_domain_extractor(train_set, epochs=2, seed=3, batch_size=16, progress=False)
    x = _images(train_set, 8)
    assert torch.equal(extract_features(trained, x), extract_features(again, x))


def test_in_domain_features_are_standardised_and_spread(trained, train_set) -> None:
    # Standardised over the training slices: mean 0, SD 1 per feature. Slices that look
    # alike must still get distinct features (a global pool after GroupNorm would not).
    f = extract_features(trained, _images(train_set, len(train_set))).double()
    assert torch.allclose(f.mean(0), torch.zeros(128, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(f.std(0), torch.ones(128, dtype=torch.float64), atol=1e-3)
    pairwise = torch.cdist(f, f)
    assert float(pairwise[~torch.eye(len(f), dtype=torch.bool)].min()) > 0.5


def test_in_domain_round_trip(trained, train_set, tmp_path) -> None:
    x = _images(train_set, 8)
    before = extract_features(trained, x)
    trained.save_pretrained(tmp_path / "fx")
    assert trained.name == f"in-domain:{tmp_path / 'fx'}"
    config = json.loads((tmp_path / "fx" / "config.json").read_text())
    assert config["architecture"]["image_size"] == 32
    assert config["training"]["n_train"] == 48 and config["training"]["epochs"] == 2
    loaded = InDomainExtractor.from_pretrained(tmp_path / "fx")
    assert torch.equal(extract_features(loaded, x), before)
    assert loaded.training_record == trained.training_record
    # build_extractor reuses a saved folder rather than training again.
    cfg = EvaluationConfig(feature_extractor="in_domain", in_domain_dir=str(tmp_path / "fx"))
    assert torch.equal(extract_features(build_extractor(cfg), x), before)


def test_in_domain_bad_folders(tmp_path) -> None:
    with pytest.raises(FeatureExtractorError, match="empty_dir"):
        InDomainExtractor.from_pretrained(tmp_path / "empty_dir")
    bad = tmp_path / "bad_dir"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(FeatureExtractorError, match="bad_dir"):
        InDomainExtractor.from_pretrained(bad)


def test_build_in_domain_trains_and_saves(train_set, tmp_path) -> None:
    cfg = EvaluationConfig(feature_extractor="in_domain", in_domain_epochs=1)
    with pytest.raises(FeatureExtractorError, match="train_set"):
        build_extractor(cfg)
    extractor = build_extractor(cfg, train_set, out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "feature_extractor" / "config.json").read_text())
    assert saved["training"]["epochs"] == 1
    assert extractor.name == f"in-domain:{tmp_path / 'feature_extractor'}"


def test_plugs_into_torchmetrics_fid(trained, train_set) -> None:
    """torchmetrics reads num_features and feeds [0, 1] floats; same FID as fid_kid."""
    real, fake = _images(train_set, 24), _images(train_set, 24).roll(2, dims=-1)
    metric = FrechetInceptionDistance(feature=trained, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ours = fid_kid(real, fake, trained, kid_subset_size=10)
    assert float(metric.compute()) == pytest.approx(ours["fid"], rel=1e-4)
    assert ours["feature_extractor"] == trained.name and ours["kid_subset_size"] == 10
