"""Feature adapters: shapes, exact resizing values, errors."""

import pytest
import torch
from torch import nn

from multikd.method.adapters import FeatureAdapter, build_adapters
from multikd.errors import ModelError
from tolerances import ref64


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


# --- the reference adapters, transcribed by hand ------------------------------------------


class _ReferenceEmbed(nn.Module):
    """Rorozhl/CA-MKD models/util.py Embed(convs=False) after CalWeight's resize."""

    def __init__(self, dim_in, dim_out, t_h):
        super().__init__()
        self.t_h = t_h
        self.transfer = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, kernel_size=1), nn.BatchNorm2d(dim_out), nn.ReLU()
        )

    def forward(self, x):
        if x.shape[2] >= self.t_h:
            x = torch.nn.functional.adaptive_avg_pool2d(x, (self.t_h, self.t_h))
        else:
            x = torch.nn.functional.interpolate(x, size=(self.t_h, self.t_h), mode="bilinear")
        return self.transfer(x)


class _ReferenceConvReg(nn.Module):
    """CA-MKD's copy of RepDistiller's models/util.py ConvReg (use_relu=True)."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        self.s_h, self.t_h = s_h, t_h
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1, stride=1)
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x):
        if self.s_h * 4 == self.t_h:
            x = torch.nn.functional.interpolate(x, size=(self.t_h, self.t_h), mode="bilinear")
        return torch.relu(self.bn(self.conv(x)))


def _same_parameters(ours: nn.Module, reference: nn.Module) -> None:
    """Copy the reference's (random) parameters and buffers into ours, in module order."""
    ours_tensors = list(ours.parameters()) + list(ours.buffers())
    ref_tensors = list(reference.parameters()) + list(reference.buffers())
    assert [t.shape for t in ours_tensors] == [t.shape for t in ref_tensors]
    with torch.no_grad():
        for mine, theirs in zip(ours_tensors, ref_tensors):
            mine.copy_(theirs)


@pytest.mark.parametrize("s_hw,t_hw", [(8, 8), (16, 8), (4, 8), (2, 8), (8, 4), (8, 6)])
@pytest.mark.parametrize("kind", ["embed", "convreg"])
def test_embed_and_convreg_equal_the_reference_modules(kind, s_hw, t_hw):
    from multikd.method.adapters import build_adapter

    torch.manual_seed(0)
    s_shape, t_shape = (3, s_hw, s_hw), (5, t_hw, t_hw)
    if kind == "embed":
        reference = _ReferenceEmbed(3, 5, t_hw)
    else:
        reference = _ReferenceConvReg((1, *s_shape), (1, *t_shape))
    ours = build_adapter(s_shape, t_shape, kind=kind)
    _same_parameters(ours, reference)
    ours.double(), reference.double()  # float64: the same function on any CPU's kernels
    x = torch.randn(4, *s_shape, dtype=torch.float64)
    for train in (True, False):  # batch statistics, then the running ones both moved
        ours.train(train), reference.train(train)
        want = reference(x)
        torch.testing.assert_close(ours(x), want, **ref64(want))
    torch.testing.assert_close(ours.bn.running_mean, reference_bn(reference).running_mean)
    assert ours(x).shape == (4, *t_shape) and (ours(x) >= 0).all()


def reference_bn(module: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def test_adapter_kinds_differ_where_their_sources_do():
    from multikd.method.adapters import ADAPTER_KINDS, build_adapter

    assert ADAPTER_KINDS == ("conv1x1", "embed", "convreg", "mmkd")
    conv1x1, embed, convreg = (build_adapter((3, 8, 8), (5, 4, 4), kind=k)
                               for k in ADAPTER_KINDS[:3])
    assert conv1x1.conv.bias is None and not conv1x1.relu
    assert embed.conv.bias is not None and embed.conv.kernel_size == (1, 1) and embed.relu
    assert convreg.conv.kernel_size == (3, 3) and convreg.conv.stride == (2, 2)
    assert build_adapter((3, 8, 8), (5, 4, 4), kind="conv1x1", relu=True).relu


def test_convreg_refuses_ratios_it_cannot_map():
    from multikd.method.adapters import build_adapter

    with pytest.raises(ModelError, match="convreg adapter cannot map a student map of 3x3"):
        build_adapter((3, 3, 3), (5, 8, 8), kind="convreg")
    with pytest.raises(ModelError, match="unknown adapter kind 'nosuch'.*conv1x1, embed, convreg"):
        build_adapter((3, 8, 8), (5, 8, 8), kind="nosuch")
