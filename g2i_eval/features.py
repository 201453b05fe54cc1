"""Feature extractors for FID, KID and the feature-space memorisation audit.

Two kinds, chosen by ``evaluation.feature_extractor``:

``inception``
    Inception-v3 (:mod:`g2i_eval.inception`) with weights read from a torchvision-layout
    state-dict file (``evaluation.inception_weights``; nothing is downloaded). The file's
    ``fc`` head says which network it belongs to, and that network is built: the FID
    weights (1008 classes) run in the FID network's pooling, exactly as pytorch-fid runs
    them, torchvision's ImageNet weights (1000 classes) in torchvision's; a file without
    either head is refused. The extractor's ``name`` says which (``inception-v3-fid:`` or
    ``inception-v3-torchvision:``). Slices are resized to 299 x 299 (bilinear, as
    pytorch-fid does), the channel is repeated to RGB and intensities are scaled to
    [-1, 1], the input both weights were trained on. 2048-d pooled features.
    Natural-image features: with the FID weights, comparable with published FIDs in kind,
    but blind to much of what matters in an MRI slice.

``in_domain``
    :class:`InDomainExtractor`, a small CNN trained by :func:`train_in_domain_extractor` on the
    real *training* slices of the run (never on test or generated images). Architecture: the
    slice scaled to [-1, 1], four blocks of [3x3 conv stride 2, GroupNorm, SiLU, 3x3 conv,
    GroupNorm, SiLU] with 32, 64, 128, 128 channels (H -> H / 16), an average pool to a 4 x 4
    grid (so where things are in the slice still counts), flattened and projected linearly to
    ``num_features`` = 128 features, and a linear 3-class head on them used only in training.
    After training, each feature is standardised with its mean and SD over the training
    slices (stored with the model), so distances and FIDs are in units of the real data's
    own variation between slices (brain slices differ little, and raw FIDs would be tiny).
    (A global average pool right after GroupNorm would give nearly the same vector for every
    slice: the norm removes each group's spatial mean.)
    Objective: diagnosis (CN / MCI / AD) cross-entropy, AdamW, with light augmentation (random
    shifts of up to H / 16 pixels and left-right flips). Its features therefore measure what
    separates diagnoses in this data set (ventricle size, atrophy) rather than natural-image
    texture; FIDs computed with it are comparable only between runs that use the same saved
    extractor, which is why every FID entry carries the extractor's ``name``. The saved folder
    (``config.json`` + ``model.safetensors``) records the architecture, the image size and the
    training (epochs, seed, number of slices, final training accuracy).

Both take (B, 1, H, W) float32 in [0, 1] (uint8 in [0, 255] is scaled by 1/255) and return
(B, F) float32, and both plug into torchmetrics as custom feature networks:
``FrechetInceptionDistance(feature=extractor)`` reads ``num_features`` (no dummy forward
pass), and passes the images to ``forward`` unchanged whatever ``normalize`` says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from conf.schema import EvaluationConfig
from g2i_eval.inception import InceptionV3, pooling_of, split_head_keys
from g2i_models.device import get_device
from preprocessing.errors import G2IError
from preprocessing.versions import package_versions

IN_DOMAIN_TYPE = "g2i-in-domain-feature-extractor"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INCEPTION_FIX = (
    "set evaluation.inception_weights to a torchvision-layout Inception-v3 state dict with "
    "its fc head (the FID weights pt_inception-2015-12-05 or torchvision's ImageNet weights), "
    "or use evaluation.feature_extractor=in_domain"
)


class FeatureExtractorError(G2IError):
    """A feature extractor cannot be built: missing or incompatible weights, a bad folder."""


class FeatureExtractor(nn.Module):
    """Base class: (B, 1, H, W) in [0, 1] -> (B, ``num_features``) float32.

    Subclasses set ``name`` (which tags every FID / KID value) and ``num_features`` and
    implement ``_features`` on validated float input.
    """

    name: str
    num_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"{self.name} expects images (B, 1, H, W), got {tuple(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self._features(x).float()

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FeatureExtractorError(
            f"Inception weights file {path} does not exist; {INCEPTION_FIX}"
        )
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the same thing to the user
        raise FeatureExtractorError(
            f"cannot read Inception weights {path} ({type(err).__name__}: {err}); {INCEPTION_FIX}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureExtractorError(
            f"Inception weights {path} hold a {type(state).__name__}, not a state dict of "
            f"tensors; {INCEPTION_FIX}"
        )
    return state


def _brief(keys: list[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 pooled features (2048-d) from a torchvision-layout weights file.

    The network (FID or torchvision pooling) is the one the file's ``fc`` head belongs to.
    Frozen and always in eval mode (batch norm uses the stored statistics).
    """

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        path = Path(weights)
        state = _read_state_dict(path)
        pooling = pooling_of(state)
        if pooling is None:
            head = state.get("fc.weight")
            found = "no fc.weight" if head is None else f"fc.weight of {head.shape[0]} classes"
            raise FeatureExtractorError(
                f"Inception weights {path} have {found}, so which network they belong to "
                f"(FID: 1008 classes, torchvision: 1000) is unknown; {INCEPTION_FIX}"
            )
        self.name = f"inception-v3-{pooling}:{path.name}"
        self.num_features = InceptionV3.num_features
        self.net = InceptionV3(pooling)
        trunk, _ = split_head_keys(state)
        expected = self.net.state_dict()
        # Older files lack the BatchNorm step counters; they play no part in eval mode.
        missing = [k for k in expected if k not in trunk and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in trunk if k not in expected]
        wrong = [k for k in trunk if k in expected and trunk[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            parts = [
                f"{label} {len(keys)}: {_brief(keys)}"
                for label, keys in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("wrong shapes", wrong),
                )
                if keys
            ]
            raise FeatureExtractorError(
                f"Inception weights {path} do not match Inception-v3 ({'; '.join(parts)}); "
                f"{INCEPTION_FIX}"
            )
        self.net.load_state_dict(trunk, strict=False)
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> InceptionExtractor:
        """Stays in eval mode: the batch-norm statistics are part of the feature definition."""
        return super().train(False)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x.repeat(1, 3, 1, 1) * 2.0 - 1.0)


@dataclass
class InDomainArchitecture:
    """The in-domain CNN's shape; stored in ``config.json``."""

    image_size: int = 64
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    norm_groups: int = 8
    num_classes: int = 3
    pool_grid: int = 4
    num_features: int = 128


def _block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class InDomainExtractor(FeatureExtractor):
    """Small diagnosis CNN; its pooled activations are the features (see module docstring).

    ``training_record`` holds how it was trained (None before training); it is written to
    ``config.json`` by :meth:`save_pretrained`.
    """

    def __init__(
        self,
        arch: InDomainArchitecture | None = None,
        name: str = "in-domain:unsaved",
        training_record: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch or InDomainArchitecture()
        self.name = name
        self.num_features = self.arch.num_features
        self.training_record = training_record
        widths = [1, *self.arch.channels]
        self.body = nn.Sequential(
            *(_block(a, b, self.arch.norm_groups) for a, b in zip(widths, widths[1:], strict=False))
        )
        grid = self.arch.pool_grid
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.project = nn.Linear(self.arch.channels[-1] * grid * grid, self.num_features)
        self.head = nn.Linear(self.num_features, self.arch.num_classes)
        # Per-feature mean and SD over the training slices, set after training.
        self.register_buffer("feature_mean", torch.zeros(self.num_features))
        self.register_buffer("feature_scale", torch.ones(self.num_features))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return (self.embed(x) - self.feature_mean) / self.feature_scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, num_features) projections before standardisation."""
        size = self.arch.image_size
        if x.shape[-2:] != (size, size):
            raise ValueError(
                f"{self.name} was trained on {size}x{size} slices, got {tuple(x.shape[-2:])}; "
                "use an extractor trained at this image size (evaluation.in_domain_dir='')"
            )
        return self.project(self.pool(self.body(x * 2.0 - 1.0)).flatten(1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, num_classes) diagnosis logits (training only)."""
        return self.head(F.silu(self.embed(x)))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors``; ``name`` becomes "in-domain:<folder>"."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "type": IN_DOMAIN_TYPE,
            "architecture": asdict(self.arch),
            "num_features": self.num_features,
            "input": "(B, 1, H, W) float32 in [0, 1], scaled to [-1, 1] inside",
            "training": self.training_record,
            "versions": package_versions(["g2i-fed", "torch", "safetensors"]),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME))
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        self.name = f"in-domain:{out}"
        return out

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> InDomainExtractor:
        """Load a folder written by :meth:`save_pretrained` (no training code needed)."""
        path = Path(folder)
        fix = "point evaluation.in_domain_dir to a folder written by save_pretrained, or leave "
        fix += "it empty to train one"
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise FeatureExtractorError(
                f"in-domain extractor folder {path} has no {CONFIG_NAME}; {fix}"
            )
        try:
            config = json.loads(config_path.read_text())
            if config.get("type") != IN_DOMAIN_TYPE:
                raise ValueError(f"type is {config.get('type')!r}, not {IN_DOMAIN_TYPE!r}")
            arch = InDomainArchitecture(**config["architecture"])
            model = cls(arch, name=f"in-domain:{path}", training_record=config.get("training"))
            model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        except Exception as err:  # JSON, schema, safetensors and key errors alike
            raise FeatureExtractorError(
                f"cannot load the in-domain extractor in {path} "
                f"({type(err).__name__}: {err}); {fix}"
            ) from err
        return model.eval()


def _augment(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random shifts of up to ``max_shift`` pixels (zero fill) and left-right flips."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=g).tolist()
    flips = (torch.rand(b, generator=g) < 0.5).tolist()
    out = []
    for (dy, dx), flip, img in zip(offsets, flips, padded, strict=True):
        crop = img[:, dy : dy + h, dx : dx + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def train_in_domain_extractor(
    train_set: Dataset,
    epochs: int,
    seed: int = 0,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> InDomainExtractor:
    """Train the in-domain CNN on diagnosis cross-entropy over the real training slices.

    ``train_set`` yields dicts with "image" (1, H, W) in [0, 1] and "label" (CN 0, MCI 1, AD 2).
    Deterministic for a given seed on CPU; the global RNGs are left untouched. Returns the
    model in eval mode on ``device`` with its ``training_record`` filled in.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train == 0:
        raise FeatureExtractorError("cannot train the in-domain extractor on an empty data set")
    image_size = int(train_set[0]["image"].shape[-1])
    dev = device if isinstance(device, torch.device) else get_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InDomainExtractor(InDomainArchitecture(image_size=image_size))
    model.to(dev).train()
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    max_shift = max(1, image_size // 16)
    bar = tqdm(range(epochs), disable=not progress, desc="in-domain features")
    epoch_loss = float("nan")
    for _ in bar:
        total, count = 0.0, 0
        for batch in loader:
            x = _augment(batch["image"].float(), max_shift, g).to(dev)
            y = batch["label"].long().to(dev)
            loss = F.cross_entropy(model.logits(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(y), count + len(y)
        epoch_loss = total / count
        bar.set_postfix(loss=f"{epoch_loss:.3f}")
    model.eval()
    correct, embedded = 0, []
    with torch.no_grad():
        for batch in DataLoader(train_set, batch_size=batch_size):
            x = batch["image"].float().to(dev)
            pred = model.logits(x).argmax(1).cpu()
            correct += int((pred == batch["label"].long()).sum())
            embedded.append(model.embed(x))
    f = torch.cat(embedded)
    model.feature_mean.copy_(f.mean(0))
    model.feature_scale.copy_(f.std(0).clamp(min=1e-6) if len(f) > 1 else torch.ones_like(f[0]))
    model.training_record = {
        "objective": "diagnosis cross-entropy (CN / MCI / AD)",
        "augmentation": f"random shifts up to {max_shift} px (zero fill), left-right flips",
        "optimizer": "AdamW",
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "n_train": n_train,
        "final_train_loss": epoch_loss,
        "final_train_accuracy": correct / n_train,
        "features": "standardised with the training slices' per-feature mean and SD",
    }
    return model


def build_extractor(
    cfg: EvaluationConfig,
    train_set: Dataset | None = None,
    out_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> FeatureExtractor:
    """The extractor ``cfg.feature_extractor`` names.

    "inception": loads ``cfg.inception_weights`` (required). "in_domain": loads
    ``cfg.in_domain_dir`` when set, else trains on ``train_set`` for ``cfg.in_domain_epochs``
    and saves the result under ``out_dir / "feature_extractor"`` when ``out_dir`` is given.
    """
    if cfg.feature_extractor == "inception":
        if not cfg.inception_weights:
            raise FeatureExtractorError(
                "evaluation.feature_extractor=inception requires evaluation.inception_weights; "
                + INCEPTION_FIX
            )
        return InceptionExtractor(cfg.inception_weights)
    if cfg.feature_extractor == "in_domain":
        if cfg.in_domain_dir:
            return InDomainExtractor.from_pretrained(cfg.in_domain_dir)
        if train_set is None:
            raise FeatureExtractorError(
                "evaluation.feature_extractor=in_domain with no evaluation.in_domain_dir needs "
                "the real training slices to train on; pass train_set or set "
                "evaluation.in_domain_dir to a saved extractor"
            )
        model = train_in_domain_extractor(
            train_set, cfg.in_domain_epochs, seed=seed, progress=progress
        )
        if out_dir is not None:
            model.save_pretrained(Path(out_dir) / "feature_extractor")
        return model
    raise ValueError(
        f"evaluation.feature_extractor must be 'in_domain' or 'inception', "
        f"got {cfg.feature_extractor!r}"
    )


def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 64
) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> (N, F) float32 on CPU, in eval mode without gradients."""
    was_training = extractor.training
    extractor.eval()
    param = next(extractor.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    try:
        with torch.no_grad():
            chunks = [
                extractor(images[i : i + batch_size].to(dev)).cpu()
                for i in range(0, len(images), batch_size)
            ]
    finally:
        extractor.train(was_training)
    if not chunks:
        return torch.zeros(0, extractor.num_features)
    return torch.cat(chunks)
