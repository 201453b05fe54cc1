"""The server's side of a public stage: the LDM's starting weights come from the public
model, the sites' trained subset is laid over the global model, and the target epsilon
counts only the private phase's steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conf import load_config, to_object
from g2i_models.datasets import SyntheticSliceDataset
from g2i_models.federated import planned_dp_steps
from g2i_models.pretrain import PretrainedModelError, load_pretrained, pretrain_public
from server.phases import Federation, initial_weights, merge_subset, public_autoencoder
from server.run_state import RunState
from tests.g2i_models.tiny import tiny_model_config, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = [
    "data.image_size=16",
    "model.ae_channels=[8,16,16]",
    "model.ae_norm_groups=4",
    "model.unet_channels=[16,32]",
    "model.unet_attention_levels=[false,true]",
    "model.unet_norm_groups=4",
    "model.snp_embed_dim=16",
    "model.snp_depth=1",
    "model.snp_heads=2",
]


def test_the_ldm_starts_from_the_public_model(tmp_path: Path) -> None:
    data = SyntheticSliceDataset(8, 16, n_snps=6, seed=3)
    cfg = tiny_train_config(max_steps_ae=1, max_steps_ldm=1, scale_batches=1)
    pretrain_public(data, tiny_model_config(), cfg, tmp_path, progress=False)
    root = load_config("tiny", [*SMALL, f"model.pretrained={tmp_path / 'model'}"])
    assert to_object(root.model).unet_channels == tiny_model_config().unet_channels
    fed = Federation(None, root, RunState(tmp_path / "run"))  # type: ignore[arg-type]
    fed.results["panel"] = data.snp_names
    ae, scale = public_autoencoder(fed)
    pipe = load_pretrained(tmp_path / "model")
    assert scale == pytest.approx(float(pipe.vae.config.scaling_factor))
    vae = pipe.vae.state_dict()
    assert all(np.allclose(v, vae[k].numpy(), atol=1e-3) for k, v in ae.items())
    ldm = initial_weights(fed, "ldm")
    unet = pipe.unet.state_dict()
    assert all(np.allclose(ldm[f"unet.{k}"], v.numpy(), atol=1e-3) for k, v in unet.items())
    assert fed.results["pretrained"]["fresh_tensors"] == []


def test_the_trained_subset_is_laid_over_the_global_model() -> None:
    whole = {"a": np.zeros(2), "b": np.ones(2)}
    merged = merge_subset(whole, {"b": np.full(2, 5.0)})
    assert np.array_equal(merged["a"], whole["a"]) and np.array_equal(merged["b"], [5, 5])
    with pytest.raises(KeyError, match="lacks"):
        merge_subset(whole, {"c": np.zeros(1)})


def test_target_epsilon_counts_the_private_phase_at_the_expected_batch() -> None:
    root = load_config(
        "fed_tiny",
        ["privacy=dp_sgd", "privacy.expected_batch_size=32", "train.ldm_epochs=25",
         "train.max_steps_ldm=0"],
    )  # fmt: skip
    fed, train, privacy = (to_object(root[k]) for k in ("federation", "train", "privacy"))
    scratch = planned_dp_steps([64, 128], fed, train)
    public = planned_dp_steps([64, 128], fed, train, privacy, pretrained=True)
    assert public == fed.rounds_ldm * train.ldm_epochs * (128 // 32) < scratch


def test_initial_weights_follow_the_run_seed(tmp_path: Path) -> None:
    """Two runs with one seed start from the same weights; another seed, or the other phase's
    stream, gives other weights; the global torch stream is left as it was."""

    def weights(seed: int, phase: str) -> dict[str, np.ndarray]:
        root = load_config("tiny", [*SMALL, f"seed={seed}"])
        fed = Federation(None, root, RunState(tmp_path / f"run{seed}{phase}"))  # type: ignore[arg-type]
        fed.results["panel"] = [f"rs{i}" for i in range(6)]
        return initial_weights(fed, phase)

    import torch

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = weights(0, "ae"), weights(0, "ae"), weights(1, "ae")
    assert torch.equal(torch.rand(3), before)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    ldm0, ldm0b = weights(0, "ldm"), weights(0, "ldm")
    assert all(np.array_equal(ldm0[k], ldm0b[k]) for k in ldm0)


def test_a_public_model_of_another_diffusion_process_is_refused(tmp_path: Path) -> None:
    """Weights trained to predict the noise are wrong for a run that predicts v (and the
    reverse) without any error of their own: the server refuses them, naming the fix."""
    data = SyntheticSliceDataset(8, 16, n_snps=6, seed=3)
    cfg = tiny_train_config(max_steps_ae=1, max_steps_ldm=1, scale_batches=1)
    pretrain_public(
        data, tiny_model_config(prediction_type="epsilon"), cfg, tmp_path, progress=False
    )
    public = tmp_path / "model"
    for extra, refused in (([], True), (["model.prediction_type=epsilon"], False)):
        root = load_config("tiny", [*SMALL, f"model.pretrained={public}", *extra])
        fed = Federation(None, root, RunState(tmp_path / f"run{len(extra)}"))  # type: ignore[arg-type]
        fed.results["panel"] = data.snp_names
        public_autoencoder(fed)
        if refused:
            with pytest.raises(PretrainedModelError, match="model.prediction_type=epsilon"):
                initial_weights(fed, "ldm")
        else:
            assert initial_weights(fed, "ldm")
