"""``reviewkd``: knowledge review (Chen et al., "Distilling Knowledge via Knowledge Review",
CVPR 2021).

mdistiller ``mdistiller/distillers/ReviewKD.py`` (``ReviewKD``, ``ABF``, ``hcl_loss``; the
same as dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py``). The student's maps
(every stage but the stem, then the pooled vector as a 1x1 map) are reviewed from deep to
shallow: the deepest goes through an ABF without fusion; every shallower one through an
ABF (attention-based fusion) that fuses it with the previous ABF's residual, upsampled to
its size (nearest), by a two-channel sigmoid attention:

    x = bn(conv1x1(f_s))                                  (mid_channel channels)
    x = x * a_0 + interpolate(r, f_s's size) * a_1,  a = sigmoid(conv1x1([x, r]))
    x = interpolate(x, the teacher map's size)            (when the sizes differ)
    out = bn(conv3x3(x)),  r = x                          (the teacher map's channels)

and each ``out`` is compared with the teacher's map at the same level by HCL, the
hierarchical context loss: the mse plus the mse of both maps average-pooled to 4x4, 2x2,
1x1 (the levels smaller than the map), weighted 1, 1/2, 1/4, 1/8 and divided by the sum of
the weights used, summed over the levels; times the warm-up ``min(epoch / warmup_epochs,
1)`` with the 1-based epoch (mdistiller's trainer passes ``epoch`` from 1, and
``forward_train`` reads ``kwargs["epoch"]``; the original repository's 0-based loop gives
0 in its first epoch). The ABFs are trained with the student; their BatchNorms normalise
over the batch in training mode, as the reference's.

**What is derived.** mdistiller configures four lists per pair (``CFG.REVIEWKD``, the
defaults being res32x4 -> res8x4's, ``configs/cifar100/reviewkd.yaml``; the original
repository's ``build_review_kd`` lists the other pairs). They are the maps' own channels and
sizes, so they are derived here from the shapes the module is given (student maps ``s_1..s_n``
and teacher maps ``t_1..t_n`` in ``reads`` order, shallow to deep, pooled last):

- ``in_channels``  = channels of ``s_1..s_n`` (shallow to deep), ``IN_CHANNELS``;
- ``out_channels`` = channels of ``t_1..t_n`` (shallow to deep), ``OUT_CHANNELS``;
- ``shapes``       = side of ``s_n..s_1`` (deep to shallow, as the reference indexes them
  against the reversed maps: ``SHAPES = [1, 8, 16, 32]``);
- ``out_shapes``   = side of ``t_n..t_1`` (deep to shallow), ``OUT_SHAPES``;
- ``mid_channel``  = ``min(512, in_channels[-1])`` (the reference's expression; its
  ``MAX_MID_CHANNEL = 512`` is read but the 512 is written in) unless given.

This gives mdistiller's lists for resnet32x4 -> resnet8x4 (channels [64, 128, 256, 256],
shapes [1, 8, 16, 32], mid 256) and the original repository's for vgg13 -> vgg8
(channels [128, 256, 512, 512, 512], shapes [1, 4, 4, 8, 16], mid 512), resnet56 ->
resnet20, wrn_40_2 -> wrn_16_2 and the ShuffleNet / MobileNetV2 students (checked in
``tests/test_feature_loss_reviewkd.py``). The one departure of a configured list from the
maps: the original's ``resnet`` students list ``shapes = [1, 8, 16, 32, 32]`` for four
maps; the reference's ``zip`` never reads the fifth entry, so the derived four are its
meaning. The maps must be square (the reference interpolates to ``(shape, shape)``) and the
two models must give as many maps (the reference pairs ABF i with teacher map i).

As the reference, the targets are the teacher's maps *before* their last ReLU
(``preact_feats[1:]``, the original's ``preact=True``: ``teacher_reads = "preact+pooled"``,
the zoo's ``preact_feature_names``) and the student's maps after it (``STU_PREACT =
False``: ``reads = "stages+pooled"``).

**Departures.** (0) Models with different stage counts (a vgg13 teacher beside a resnet8x4
student: four stages and three) keep the deepest levels of each, so the pooled vectors pair
and the extra shallow stage is not read; the reference has no such pair (its lists are
configured per pair, of equal length). (1) Per sample: the reference's ``F.mse_loss(reduction="mean")`` is a
mean over the batch and C, H, W; here each sample's mean over C, H, W, whose batch mean is the reference's value
(every sample has as many elements). The ABFs run in float32 (autocast off) for
half-precision input, as every loss computes.

Reference weight: γ = 5 (mdistiller ``configs/cifar100/reviewkd.yaml`` ``REVIEWKD_WEIGHT:
5.0`` for res32x4 -> res8x4, the cfg default being 1.0; the original's script uses 5 for
most pairs, 8 for ShuffleV2, 0.6 for resnet56 -> resnet20, 1 for resnet110 -> resnet32),
warm-up 20 epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multikd.errors import ConfigError
from multikd.method.feature_losses.base import FeatureBatch, FeatureLoss, register_feature_loss
from multikd.method.precision import upcast

HCL_LEVELS = (4, 2, 1)
"""The pooled sizes HCL adds to the full-resolution mse (those smaller than the map)."""

MAX_MID_CHANNEL = 512
"""The reference's cap on the ABFs' width: ``mid_channel = min(512, in_channels[-1])``."""


class ABF(nn.Module):
    """Attention-based fusion (mdistiller ``ABF``): ``in_channel`` student channels to
    ``mid_channel``, fused (``fuse``) with the deeper level's residual, then to
    ``out_channel`` teacher channels. ``forward`` returns ``(out, residual)``."""

    def __init__(self, in_channel: int, mid_channel: int, out_channel: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid_channel),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        if fuse:
            self.att_conv = nn.Sequential(
                nn.Conv2d(mid_channel * 2, 2, kernel_size=1),
                nn.Sigmoid(),
            )
        else:
            self.att_conv = None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, shape: int | None = None,
                out_shape: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return self.conv2(x), x


def hcl_per_sample(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """``[B]``: mdistiller's ``hcl_loss`` with each mse a per-sample mean over C, H, W."""
    total = None
    for fs, ft in zip(student, teacher):
        h = fs.shape[2]
        loss = (fs - ft).pow(2).flatten(1).mean(1)
        cnt, tot = 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= h:
                continue
            pooled_s = F.adaptive_avg_pool2d(fs, (level, level))
            pooled_t = F.adaptive_avg_pool2d(ft, (level, level))
            cnt /= 2.0
            loss = loss + (pooled_s - pooled_t).pow(2).flatten(1).mean(1) * cnt
            tot += cnt
        loss = loss / tot
        total = loss if total is None else total + loss
    return total


def _as_map_shape(shape: tuple[int, ...], side: str, i: int) -> tuple[int, int, int]:
    """A per-sample shape as ``(C, H, W)``: the pooled vector ``(C,)`` is a 1x1 map."""
    if len(shape) == 1:
        return (shape[0], 1, 1)
    if len(shape) != 3:
        raise ConfigError(
            f"feature loss 'reviewkd' reads maps [C,H,W] and the pooled vector [C], but the "
            f"{side}'s map {i} has per-sample shape {tuple(shape)}"
        )
    if shape[1] != shape[2]:
        raise ConfigError(
            f"feature loss 'reviewkd' resizes square maps (the reference interpolates to "
            f"(size, size)), but the {side}'s map {i} is {shape[1]}x{shape[2]}"
        )
    return tuple(shape)


def _as_map(f: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]``: a map as it is, the pooled ``[B,C]`` as ``[B,C,1,1]``."""
    return f.unsqueeze(-1).unsqueeze(-1) if f.dim() == 2 else f


@register_feature_loss(
    "reviewkd", "knowledge review: attention-based fusion of the student's maps deep to "
                "shallow, hierarchical context loss to the teacher's, warm-up (per sample; "
                "reference γ=5)"
)
class ReviewKD(FeatureLoss):
    """Knowledge review (module doc), per sample; ``abfs[0]`` is the deepest level's ABF,
    as in the reference's ``self.abfs = abfs[::-1]``."""

    reads = "stages+pooled"
    teacher_reads = "preact+pooled"
    reference_gamma = 5.0

    def __init__(self, student_shapes, teacher_shapes, warmup_epochs: float = 20.0,
                 mid_channel: int | None = None):
        super().__init__(student_shapes, teacher_shapes)
        s = [_as_map_shape(x, "student", i) for i, x in enumerate(self.student_shapes)]
        t = [_as_map_shape(x, "teacher", i) for i, x in enumerate(self.teacher_shapes)]
        # models of different stage counts: the deepest levels of each, the pooled vectors
        # paired (the reference configures one list per pair; it has no such pair)
        self.levels = min(len(s), len(t))
        s, t = s[len(s) - self.levels:], t[len(t) - self.levels:]
        if not warmup_epochs > 0:
            raise ConfigError(f"reviewkd: warmup_epochs must be > 0, got {warmup_epochs}")
        self.warmup_epochs = float(warmup_epochs)
        self.in_channels = [c for c, _, _ in s]
        self.out_channels = [c for c, _, _ in t]
        self.shapes = [h for _, h, _ in s][::-1]
        self.out_shapes = [h for _, h, _ in t][::-1]
        self.mid_channel = int(mid_channel if mid_channel is not None
                               else min(MAX_MID_CHANNEL, self.in_channels[-1]))
        abfs = nn.ModuleList(
            ABF(c_in, self.mid_channel, self.out_channels[i], i < len(s) - 1)
            for i, c_in in enumerate(self.in_channels)
        )
        self.abfs = abfs[::-1]

    def review(self, student: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABFs' outputs, shallow to deep, shaped like the teacher's maps."""
        x = student[::-1]
        out, res = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for f, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:],
                                            self.out_shapes[1:]):
            out, res = abf(f, res, shape, out_shape)
            results.insert(0, out)
        return results

    def warmup(self, epoch: int) -> float:
        """mdistiller's ``min(epoch / WARMUP_EPOCHS, 1.0)`` at the 1-based ``epoch``."""
        return min(epoch / self.warmup_epochs, 1.0)

    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        student = [_as_map(upcast(f)) for f in student[len(student) - self.levels:]]
        teacher = [_as_map(upcast(f)) for f in teacher[len(teacher) - self.levels:]]
        with torch.autocast(student[0].device.type, enabled=False):
            results = self.review(student)
            return self.warmup(batch.epoch) * hcl_per_sample(results, teacher)

    def extra_repr(self) -> str:
        return (f"warmup_epochs={self.warmup_epochs:g}, mid_channel={self.mid_channel}, "
                f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"shapes={self.shapes}, out_shapes={self.out_shapes}, {super().extra_repr()}")
