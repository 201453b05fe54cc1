"""Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture", 2015) as a feature
network: the convolutional trunk up to the 2048-d global average pool.

Module and parameter names follow the common PyTorch layout (``Conv2d_1a_3x3`` ...
``Mixed_7c``, each convolution a bias-free ``conv`` plus a ``bn`` with eps 0.001), shared
by torchvision's ImageNet weights and by the FID weights (TensorFlow's 2015-12-05 Inception
as ported by pytorch-fid, a 1008-class head). The two networks differ in their pooling,
which holds no parameters, so both files load into either; ``pooling`` picks the network:

``"fid"``
    The FID network, as pytorch-fid builds it: the pool branch of every 35x35 (A), 17x17
    (C) and first 8x8 (``Mixed_7b``) block averages without the zero padding
    (``count_include_pad=False``, TensorFlow's rule), and the last block (``Mixed_7c``)
    takes a 3x3 *max* pool there. Only with this and the FID weights are the features the
    ones published FIDs are computed on.
``"torchvision"``
    torchvision's ``inception_v3``: every pool branch a 3x3 average counting the padding.

The auxiliary classifier (``AuxLogits``) and the final ``fc`` are not built: features do
not use them, and :func:`split_head_keys` drops them from a state dict before loading.

Input: (B, 3, 299, 299) float32 scaled to [-1, 1] (what both weights were trained on).
Output: (B, 2048) float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# Keys of the classifier parts that a feature network does not need.
HEAD_PREFIXES = ("AuxLogits.", "fc.")
# Rows of the ``fc`` head in each known weights file: TensorFlow's 1001 classes padded to
# 1008 (the FID weights) and ImageNet's 1000 (torchvision).
HEAD_CLASSES = {1008: "fid", 1000: "torchvision"}

Size = int | tuple[int, int]
Pooling = Literal["fid", "torchvision"]
POOLINGS: tuple[Pooling, ...] = ("fid", "torchvision")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: Size, stride: int = 1, padding: Size = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def branch_pool(pooling: Pooling, last: bool = False) -> nn.Module:
    """The 3x3, stride-1 pool in front of a block's ``branch_pool`` convolution.

    ``last``: the network's final block (``Mixed_7c``), the one the FID network max-pools.
    """
    if pooling == "torchvision":
        return nn.AvgPool2d(3, stride=1, padding=1)
    if last:
        return nn.MaxPool2d(3, stride=1, padding=1)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches; 224 + ``pool_features`` out."""

    def __init__(self, c_in: int, pool_features: int, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17: strided 3x3, strided double 3x3, max pool; 480 + c_in out."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1); 768 out."""

    def __init__(self, c_in: int, channels_7x7: int, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8: strided 3x3, 7x7 then strided 3x3, max pool; 512 + c_in out."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (parallel 1x3 and 3x1); 2048 out."""

    def __init__(self, c_in: int, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


class InceptionV3(nn.Module):
    """The Inception-v3 trunk: (B, 3, 299, 299) in [-1, 1] -> (B, 2048) pooled features.

    ``pooling``: ``"fid"`` (the FID network) or ``"torchvision"``; see the module docstring.
    """

    num_features = 2048

    def __init__(self, pooling: Pooling = "fid") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32, branch_pool(pooling))
        self.Mixed_5c = InceptionA(256, 64, branch_pool(pooling))
        self.Mixed_5d = InceptionA(288, 64, branch_pool(pooling))
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, branch_pool(pooling))
        self.Mixed_6c = InceptionC(768, 160, branch_pool(pooling))
        self.Mixed_6d = InceptionC(768, 160, branch_pool(pooling))
        self.Mixed_6e = InceptionC(768, 192, branch_pool(pooling))
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, branch_pool(pooling))
        self.Mixed_7c = InceptionE(2048, branch_pool(pooling, last=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147x147
        x = F.max_pool2d(x, 3, stride=2)  # 73x73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71
        x = F.max_pool2d(x, 3, stride=2)  # 35x35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)  # 17x17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7a(x)  # 8x8
        x = self.Mixed_7c(self.Mixed_7b(x))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def split_head_keys(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(trunk state, dropped keys)``: the state without ``AuxLogits.*`` and ``fc.*``."""
    trunk = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    return trunk, sorted(set(state) - set(trunk))


def pooling_of(state: dict[str, torch.Tensor]) -> Pooling | None:
    """The network a weights file was trained in, told by its ``fc`` head; None if unknown."""
    head = state.get("fc.weight")
    return None if head is None else HEAD_CLASSES.get(int(head.shape[0]))
