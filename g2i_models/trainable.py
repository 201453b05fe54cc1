"""Which parameters of the denoiser a local run trains (``privacy.trainable``).

``"all"`` trains everything. ``"conditioning"`` is the subset the published private
fine-tuning recipes train after public pretraining (DP-LDM trains the attention and
conditioning layers, about a tenth of the parameters): the SNP encoder, the condition
embeddings (ours, ``cond_embedding.*``, or the UNet's class / added embeddings of the paper's
variants) and the UNet's cross-attention to the SNP tokens (``attn2`` and the norm in front
of it); in ``concat`` label mode the input convolution, which reads the diagnosis maps. The
rest is frozen: it keeps the public stage's weights, spends no privacy and does not travel
back from a site.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from conf.schema import TRAINABLE_SUBSETS

# Name prefixes (without Opacus's ``_module.``) of the conditioning path, and name parts of
# the UNet's cross-attention inside its transformer blocks.
CONDITIONING_PREFIXES = (
    "snp_encoder.",
    "cond_embedding.",
    "unet.class_embedding.",
    "unet.add_embedding.",
)
CROSS_ATTENTION_PARTS = (".attn2.", ".norm2.")


def is_conditioning(name: str, label_concat: bool = False) -> bool:
    """Whether parameter ``name`` of a ``ConditionalDenoiser`` is on the conditioning path."""
    name = name.removeprefix("_module.")
    if name.startswith(CONDITIONING_PREFIXES):
        return True
    if label_concat and name.startswith("unet.conv_in."):
        return True
    return ".transformer_blocks." in name and any(p in name for p in CROSS_ATTENTION_PARTS)


def trainable_names(model: nn.Module, subset: str) -> list[str]:
    """Parameter names of ``model`` that ``subset`` trains (all of them for ``"all"``)."""
    if subset not in TRAINABLE_SUBSETS:
        raise ValueError(f"unknown trainable subset {subset!r}; choose one of {TRAINABLE_SUBSETS}")
    names = [n.removeprefix("_module.") for n, _ in model.named_parameters()]
    if subset == "all":
        return names
    concat = getattr(model, "label_mode", "embed") == "concat"
    picked = [n for n in names if is_conditioning(n, concat)]
    if not picked:
        raise ValueError(
            f"privacy.trainable={subset}: {type(model).__name__} has no conditioning "
            "parameters (only the denoiser has); use privacy.trainable=all"
        )
    return picked


def freeze_all_but(model: nn.Module, names: Iterable[str]) -> None:
    """``requires_grad`` on exactly the parameters named (names without ``_module.``)."""
    keep = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name.removeprefix("_module.") in keep)


def subset(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of a state dict named in ``names``."""
    return {k: state[k] for k in names}


def parameter_share(model: nn.Module, names: Iterable[str]) -> float:
    """The fraction of ``model``'s parameter count that ``names`` hold."""
    keep = set(names)
    total = sum(p.numel() for p in model.parameters())
    part = sum(p.numel() for n, p in model.named_parameters() if n in keep)
    return part / max(1, total)
