"""The Inception-v3 trunk: pytorch-fid's FID network exactly, and torchvision's, one layout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from g2i_eval.inception import InceptionV3, pooling_of

# pytorch-fid's fid_inception_v3: FIDInceptionA in Mixed_5b-5d, FIDInceptionC in Mixed_6b-6e,
# FIDInceptionE_1 in Mixed_7b (average pools without the padding) and FIDInceptionE_2 in
# Mixed_7c (a max pool in the pool branch).
AVG_BLOCKS = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"]
FID_AVG_BLOCKS = [*AVG_BLOCKS, "Mixed_7b"]


@pytest.fixture(scope="module")
def nets() -> dict[str, InceptionV3]:
    torch.manual_seed(0)
    fid = InceptionV3("fid").eval()
    tv = InceptionV3("torchvision").eval()
    tv.load_state_dict(fid.state_dict(), strict=True)
    return {"fid": fid, "torchvision": tv}


def _pool_params(m: nn.Module) -> tuple[object, ...]:
    return (m.kernel_size, m.stride, m.padding)


def test_fid_network_pools_as_pytorch_fid(nets) -> None:
    net = nets["fid"]
    for name in FID_AVG_BLOCKS:
        pool = getattr(net, name).pool
        assert type(pool) is nn.AvgPool2d, name
        assert _pool_params(pool) == (3, 1, 1), name
        assert pool.count_include_pad is False, name
    last = net.Mixed_7c.pool
    assert type(last) is nn.MaxPool2d
    assert _pool_params(last) == (3, 1, 1)


def test_torchvision_network_counts_the_padding(nets) -> None:
    net = nets["torchvision"]
    for name in [*AVG_BLOCKS, "Mixed_7b", "Mixed_7c"]:
        pool = getattr(net, name).pool
        assert type(pool) is nn.AvgPool2d and _pool_params(pool) == (3, 1, 1), name
        assert pool.count_include_pad is True, name


def test_both_networks_share_one_parameter_layout(nets) -> None:
    fid, tv = (nets[k].state_dict() for k in ("fid", "torchvision"))
    assert list(fid) == list(tv)
    assert all(fid[k].shape == tv[k].shape for k in fid)
    assert not any(".pool." in k for k in fid)  # the pools hold nothing a file must carry


def test_pool_branch_uses_the_block_pool(nets) -> None:
    """The pool branch (last channels of a block) is the 1x1 conv of the FID pool."""
    torch.manual_seed(1)
    net = nets["fid"]
    with torch.no_grad():
        x = torch.randn(1, 288, 5, 5)
        block = net.Mixed_5d
        got = block(x)[:, -64:]
        no_pad = block.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        with_pad = block.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        assert torch.allclose(got, no_pad, atol=1e-6)
        assert not torch.allclose(got, with_pad, atol=1e-3)

        x = torch.randn(1, 2048, 3, 3)
        got = net.Mixed_7c(x)[:, -192:]
        assert torch.allclose(got, net.Mixed_7c.branch_pool(F.max_pool2d(x, 3, 1, 1)), atol=1e-6)
        tv = nets["torchvision"].Mixed_7c(x)[:, -192:]
        assert torch.allclose(tv, net.Mixed_7c.branch_pool(F.avg_pool2d(x, 3, 1, 1)), atol=1e-6)


def test_head_tells_the_network() -> None:
    assert pooling_of({"fc.weight": torch.zeros(1008, 2048)}) == "fid"
    assert pooling_of({"fc.weight": torch.zeros(1000, 2048)}) == "torchvision"
    assert pooling_of({"fc.weight": torch.zeros(10, 2048)}) is None
    assert pooling_of({}) is None


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="pooling"):
        InceptionV3("tensorflow")  # type: ignore[arg-type]
