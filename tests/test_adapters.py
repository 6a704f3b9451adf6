"""Feature adapters: shapes, exact resizing values, errors."""

import pytest
import torch
from torch import nn

from multikd.method.adapters import FeatureAdapter, build_adapters
from multikd.errors import ModelError


def _identity(adapter: FeatureAdapter) -> FeatureAdapter:
    """1x1 conv = identity, BN in eval with mean 0, var 1 - eps: the adapter only resizes."""
    with torch.no_grad():
        adapter.conv.weight.copy_(torch.eye(adapter.conv.weight.shape[0])[:, :, None, None])
        adapter.bn.running_var.fill_(1.0 - adapter.bn.eps)
    return adapter.eval()


def test_shrinking_averages_the_pixels_of_each_cell():
    adapter = _identity(FeatureAdapter((1, 4, 4), (1, 2, 2)))
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # 2x2 blocks: (0+1+4+5)/4, (2+3+6+7)/4, (8+9+12+13)/4, (10+11+14+15)/4
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    torch.testing.assert_close(adapter(x), expected)


def test_growing_interpolates_bilinearly():
    adapter = _identity(FeatureAdapter((1, 1, 2), (1, 1, 4)))
    x = torch.tensor([[[[0.0, 4.0]]]])
    # align_corners=False: output pixel centres at source coordinates -0.25, 0.25, 0.75, 1.25
    torch.testing.assert_close(adapter(x), torch.tensor([[[[0.0, 1.0, 3.0, 4.0]]]]))


def test_channels_shapes_vectors_and_relu():
    adapters = build_adapters((3, 8, 8), [(5, 4, 4), (2, 8, 8), (4, 16, 16)], relu=True)
    x = torch.randn(2, 3, 8, 8)
    assert [tuple(a(x).shape) for a in adapters] == [(2, 5, 4, 4), (2, 2, 8, 8), (2, 4, 16, 16)]
    assert all((a(x) >= 0).all() for a in adapters)
    vector = FeatureAdapter((6,), (9,))
    assert vector(torch.randn(4, 6)).shape == (4, 9)
    assert isinstance(adapters, nn.ModuleList)


def test_adapter_errors_say_what_fits():
    with pytest.raises(ModelError, match="same kind"):
        FeatureAdapter((3, 8, 8), (16,))
    with pytest.raises(ModelError, match=r"\(C,H,W\) or vectors"):
        FeatureAdapter((3, 8), (3, 8))
    with pytest.raises(ModelError, match=r"built for student features \(3, 8, 8\)"):
        FeatureAdapter((3, 8, 8), (4, 4, 4))(torch.zeros(1, 3, 16, 16))
