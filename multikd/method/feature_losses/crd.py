"""``crd``: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

mdistiller ``mdistiller/distillers/CRD.py`` (``Embed``, ``Normalize``, ``ContrastMemory``,
``ContrastLoss``, ``CRD.crd_loss``; RepDistiller's ``crd/memory.py`` and ``crd/criterion.py``
copied), its negatives from ``mdistiller/dataset/cifar100.py`` (``CIFAR100InstanceSample``)
and its defaults from ``mdistiller/engine/cfg.py`` (``CFG.CRD``: ``MODE "exact"``,
``FEAT.DIM 128``, ``NCE.K 16384``, ``NCE.MOMENTUM 0.5``, ``NCE.TEMPERATURE 0.07``,
``LOSS.FEAT_WEIGHT 0.8``). It reads the pooled vectors (``pooled_feat``). For a batch of B
samples with training-set indices ``i_b`` and contrast indices ``c_b = [p_b, n_b1..n_bK]``
(the positive, then K negatives):

    v_s = normalize_2(W_s f_s + b_s),   v_t = normalize_2(W_t f_t + b_t)     (Embed, dim d)
    out_s[b,j] = exp(<M_t[c_bj], v_s,b> / T) / Z_s,
    out_t[b,j] = exp(<M_s[c_bj], v_t,b> / T) / Z_t                           (ContrastMemory)
    NCE(x)     = -(1/B) sum_b [ log(x_b0 / (x_b0 + K Pn + eps))
                                + sum_j log(K Pn / (x_bj + K Pn + eps)) ]    (ContrastLoss)
    loss       = NCE(out_s) + NCE(out_t)

with ``Pn = 1/N`` (N the training set's size), ``eps = 1e-7``, ``M_s`` and ``M_t`` the
student's and the teacher's memory banks ``[N, d]`` (mdistiller's ``memory_v1`` and
``memory_v2``, initialised uniform in ``[-stdv, stdv]``, ``stdv = 1/sqrt(d/3)``), and
``Z_s = N mean_bj exp(<M_t[c_bj], v_s,b> / T)`` over the *first* batch (``Z_t`` likewise),
then fixed (buffers ``z_s``, ``z_t`` and the flag ``z_set``, saved in the state_dict).
After the scores, the memory rows of the batch move: ``M_s[i_b] <- normalize_2(m M_s[i_b]
+ (1-m) v_s,b)`` (the same for ``M_t`` with ``v_t``), ``m`` the momentum. Both embeddings are trained (the teacher's too, through
``NCE(out_t)``); the memory banks are buffers, never trained. One value per batch
(``per_sample = False``: the contrast is defined on the batch). Reference weight γ = 0.8.

**The negatives.** mdistiller's dataset draws them per sample in its ``__getitem__``;
multikd's loader gives the batch's indices only (``needs_index``), so the module draws them
itself, from the training set's labels (:class:`FeatureSetup` ``train_labels``), with its own
``torch.Generator`` on the module's device seeded from ``seed``. As the reference does, for
anchor i of class y: negatives are K indices of samples of *other* classes, uniformly
*without* replacement, or *with* replacement when K exceeds the number of such samples
(the reference's ``replace = k > len(cls_negative[y])``); the positive is i itself in
``"exact"`` mode, a uniformly drawn sample of class y (possibly i) in ``"relax"`` mode
(whose negatives are still of other classes). The generator's state is part of the
module's state_dict (``get_extra_state``), so a resumed run draws the same negatives.

Deviations from the reference, none of which changes the loss of given contrast indices:
the draws use torch's generator, not numpy's global one (other indices, the same law);
``Z`` lives in buffers, not in the ``params`` buffer with a -1 sentinel; the loss is
computed in float32 with autocast off (``exp(1/0.07)`` overflows half precision);
in eval mode (``module.eval()``) the module changes nothing: neither the memory nor ``Z``
nor its generator (its negatives then come from a fresh generator seeded from ``seed``),
where the reference never runs the loss outside training. ``percent`` (a fraction of the
negatives) is not offered: mdistiller always uses 1.0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from multikd.errors import ConfigError
from multikd.method.feature_losses.base import (
    FeatureBatch, FeatureLoss, FeatureSetup, register_feature_loss,
)
from multikd.method.precision import upcast

NCE_EPS = 1e-7
"""mdistiller ``ContrastLoss``'s eps."""

MODES = ("exact", "relax")


class Embed(nn.Module):
    """mdistiller's ``Embed``: flatten, linear to ``dim_out``, divide by the L2 norm (its
    ``Normalize(2)``, no eps)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


def contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """mdistiller's ``ContrastLoss`` (NCE) of scores ``x [B, K+1]`` (column 0 the positive),
    as a scalar."""
    bsz, m = x.shape[0], x.shape[1] - 1
    pn = 1.0 / float(n_data)
    p_pos = x[:, 0]
    log_d1 = (p_pos / (p_pos + (m * pn + NCE_EPS))).log()
    p_neg = x[:, 1:]
    log_d0 = ((m * pn) / (p_neg + (m * pn + NCE_EPS))).log()
    return -(log_d1.sum() + log_d0.sum()) / bsz


class CRD(FeatureLoss):
    """Contrastive representation distillation (module doc): two embeddings, two memory
    banks with their NCE, one value per batch; negatives drawn by class from the training
    set's labels."""

    reads = "pooled"
    per_sample = False
    needs_index = True
    stateful = True
    reference_gamma = 0.8

    def __init__(self, student_shapes, teacher_shapes, train_labels: torch.Tensor | None,
                 feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_mom: float = 0.5, mode: str = "exact", seed: int = 0):
        super().__init__(student_shapes, teacher_shapes)
        if train_labels is None:
            raise ConfigError(
                "feature loss 'crd' needs the training set's labels (it draws each sample's "
                "negatives from the other classes, as CRD's dataset does), and none were given "
                "to it (FeatureSetup.train_labels is None); build it from a labelled training set"
            )
        for side, shapes in (("student", self.student_shapes), ("teacher", self.teacher_shapes)):
            if len(shapes) != 1:
                raise ConfigError(
                    f"feature loss 'crd' reads one pooled vector per model, but the {side} "
                    f"gives {len(shapes)} maps"
                )
        if mode not in MODES:
            raise ConfigError(f"feature loss 'crd': mode must be one of {', '.join(MODES)}, "
                              f"got {mode!r}")
        if int(feat_dim) < 1 or int(nce_k) < 1:
            raise ConfigError(f"feature loss 'crd': feat_dim and nce_k must be at least 1, got "
                              f"feat_dim={feat_dim}, nce_k={nce_k}")
        if not float(nce_t) > 0:
            raise ConfigError(f"feature loss 'crd': nce_t must be positive, got {nce_t}")
        if not 0.0 <= float(nce_mom) <= 1.0:
            raise ConfigError(f"feature loss 'crd': nce_mom must be in [0, 1], got {nce_mom}")
        labels = torch.as_tensor(train_labels).detach().reshape(-1).to("cpu", torch.long)
        n_data = labels.numel()
        if n_data == 0 or int(labels.min()) < 0:
            raise ConfigError("feature loss 'crd': the training set's labels must be a "
                              "non-empty list of class indices >= 0")
        counts = torch.bincount(labels)
        present = counts[counts > 0]
        if len(present) < 2:  # both modes draw the negatives from the other classes
            raise ConfigError("feature loss 'crd' draws its negatives from the other "
                              "classes, but the training set has one class")
        self.feat_dim, self.nce_k = int(feat_dim), int(nce_k)
        self.nce_t, self.nce_mom = float(nce_t), float(nce_mom)
        self.mode, self.seed, self.n_data = mode, int(seed), n_data

        self.embed_s = Embed(_dim(self.student_shapes[0]), self.feat_dim)
        self.embed_t = Embed(_dim(self.teacher_shapes[0]), self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        # mdistiller's memory_v1 (the student's, contrasted with the teacher's embedding)
        # and memory_v2 (the teacher's), drawn from the global RNG as there.
        for name in ("memory_s", "memory_t"):
            self.register_buffer(name, torch.rand(n_data, self.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z_s", torch.zeros(()))  # mdistiller's Z_v1 (scores of v_s)
        self.register_buffer("z_t", torch.zeros(()))  # Z_v2 (scores of v_t)
        self.register_buffer("z_set", torch.zeros((), dtype=torch.bool))

        # The class lists, as one index order: the samples sorted by class (stable), class c
        # at order[start[c] : start[c] + count[c]]; derived from the labels, not saved.
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        n_neg = n_data - present
        self._all_without = bool((n_neg >= self.nce_k).all())  # no draw needs replacement
        self._all_with = bool((n_neg < self.nce_k).all())      # every draw needs it

        self._generator: torch.Generator | None = None
        self._rng_state: dict | None = None  # loaded (set_extra_state), not yet applied
        self._draws = 0

    @classmethod
    def build(cls, setup: FeatureSetup, **params) -> "CRD":
        return cls(setup.student_shapes, setup.teacher_shapes, setup.train_labels, **params)

    # ------------------------------------------------------------------ negatives
    def sample_contrast(self, index: torch.Tensor) -> torch.Tensor:
        """``[B, K+1]`` contrast indices for the training-set indices ``index [B]``: the
        positive, then K negatives (module doc). Advances the module's generator in
        training mode; in eval mode draws from a fresh generator seeded from ``seed``."""
        device = self.labels.device
        index = index.to(device=device, dtype=torch.long).reshape(-1)
        if self.training:
            g = self._training_generator(device)
            self._draws += 1
        else:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
        b, k, n = index.numel(), self.nce_k, self.n_data
        y = self.labels[index]
        count, start = self.counts[y], self.starts[y]
        if self.mode == "exact":
            positive = index
        else:  # relax: np.random.choice(cls_positive[y], 1)
            u = torch.rand(b, generator=g, device=device, dtype=torch.float64)
            q = torch.minimum((u * count).long(), count - 1)
            positive = self.order[start + q]
        n_neg = n - count
        if self._all_without:
            negatives = self._without_replacement(g, y, k)
        elif self._all_with:
            negatives = self._with_replacement(g, n_neg, count, start, k)
        else:  # classes on both sides of K: both draws for every row, each row keeps its own
            without = self._without_replacement(g, y, k)  # (K <= the largest n_neg <= N)
            with_ = self._with_replacement(g, n_neg, count, start, k)
            negatives = torch.where((n_neg >= k)[:, None], without, with_)
        return torch.cat([positive[:, None], negatives], dim=1)

    def _without_replacement(self, g, y, k):
        """``np.random.choice(cls_negative[y], K, replace=False)`` per row: a uniform
        K-subset of the other classes' samples, as the K smallest of i.i.d. uniform keys."""
        keys = torch.rand(y.numel(), self.n_data, generator=g, device=y.device,
                          dtype=torch.float64)
        keys.masked_fill_(self.labels[None, :] == y[:, None], 2.0)
        return keys.topk(k, dim=1, largest=False, sorted=True).indices

    def _with_replacement(self, g, n_neg, count, start, k):
        """``replace=True``: K i.i.d. uniform positions in the list of the other classes'
        samples (class order without class y), mapped to their indices."""
        u = torch.rand(n_neg.numel(), k, generator=g, device=n_neg.device, dtype=torch.float64)
        n_r = n_neg[:, None]
        p = torch.minimum((u * n_r).long(), n_r - 1)
        p = p + count[:, None] * (p >= start[:, None]).long()  # skip class y's block
        return self.order[p]

    def _training_generator(self, device: torch.device) -> torch.Generator:
        g = self._generator
        if g is not None and g.device == device:
            return g
        state = self._rng_state if g is None else self._snapshot()
        g = torch.Generator(device=device)
        seed = self.seed if state is None else int(state.get("seed", self.seed))
        if state is None or state.get("rng") is None:
            g.manual_seed(seed)  # not drawn yet: as fresh
        elif state.get("device_type") == device.type:
            g.set_state(state["rng"].cpu())
        else:
            warnings.warn(
                f"feature loss 'crd': its negative-sampling generator was saved on "
                f"{state.get('device_type')} and now runs on {device.type}, whose generator "
                "state differs; it is reseeded, so the negatives from here on are not those of "
                "the original run", stacklevel=3,
            )
            g.manual_seed((seed * 1_000_003 + int(state.get("draws", 0))) % (2**63))
        self._generator, self._rng_state = g, None
        return g

    def _snapshot(self) -> dict:
        g = self._generator
        if g is None:
            if self._rng_state is not None:
                return dict(self._rng_state)
            return {"seed": self.seed, "device_type": None, "rng": None, "draws": self._draws}
        return {"seed": self.seed, "device_type": g.device.type, "rng": g.get_state(),
                "draws": self._draws}

    def get_extra_state(self) -> dict:
        """The negative-sampling generator's state (``rng`` None before the first draw: seed
        from ``seed``), its device type and the number of draws; in the state_dict."""
        return self._snapshot()

    def set_extra_state(self, state) -> None:
        self._rng_state = dict(state)
        self._draws = int(state.get("draws", 0))
        self._generator = None  # rebuilt on the next draw, on the module's device

    # ------------------------------------------------------------------ loss
    def forward(self, student, teacher, batch: FeatureBatch) -> torch.Tensor:
        if batch.index is None:
            raise ValueError("feature loss 'crd' needs each sample's training-set index "
                             "(FeatureBatch.index), and the batch has none")
        return self.loss_with_contrast(student, teacher, batch.index,
                                       self.sample_contrast(batch.index))

    def loss_with_contrast(self, student, teacher, index: torch.Tensor,
                           contrast_idx: torch.Tensor) -> torch.Tensor:
        """The loss for explicit contrast indices ``contrast_idx [B, K+1]`` (mdistiller's
        ``crd_loss(f_s, f_t, idx, contrast_idx)``); in training mode it sets ``Z`` on its
        first call and moves the memory rows of ``index``."""
        f_s, f_t = _one(student, "student"), _one(teacher, "teacher")
        with torch.autocast(f_s.device.type, enabled=False):
            return self._loss(upcast(f_s), upcast(f_t.detach()), index, contrast_idx)

    def _loss(self, f_s, f_t, index, contrast_idx) -> torch.Tensor:
        dtype = self.memory_s.dtype
        v_s = self.embed_s(f_s.to(dtype))
        v_t = self.embed_t(f_t.to(dtype))
        b, d = v_s.shape
        index = index.to(device=v_s.device, dtype=torch.long).reshape(-1)
        idx = contrast_idx.to(device=v_s.device, dtype=torch.long).reshape(-1)
        w_s = self.memory_s.index_select(0, idx).view(b, -1, d)  # weight_v1
        w_t = self.memory_t.index_select(0, idx).view(b, -1, d)  # weight_v2
        out_t = torch.exp(torch.bmm(w_s, v_t.view(b, d, 1)) / self.nce_t)  # out_v2
        out_s = torch.exp(torch.bmm(w_t, v_s.view(b, d, 1)) / self.nce_t)  # out_v1
        # Z from the first batch, then fixed (no branch on the flag: nothing reads the device)
        z_s = torch.where(self.z_set, self.z_s, out_s.detach().mean() * self.n_data)
        z_t = torch.where(self.z_set, self.z_t, out_t.detach().mean() * self.n_data)
        if self.training:
            self.z_s.copy_(z_s)
            self.z_t.copy_(z_t)
            self.z_set.fill_(True)
        out_s = (out_s / z_s).squeeze(2)
        out_t = (out_t / z_t).squeeze(2)
        if self.training:
            with torch.no_grad():
                self._update(self.memory_s, v_s, index)
                self._update(self.memory_t, v_t, index)
        return contrast_loss(out_s, self.n_data) + contrast_loss(out_t, self.n_data)

    def _update(self, memory: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> None:
        """mdistiller's momentum update of ``memory`` at ``index`` with L2 renormalisation."""
        pos = memory.index_select(0, index).mul_(self.nce_mom).add_(v.detach() * (1 - self.nce_mom))
        memory.index_copy_(0, index, pos.div(pos.pow(2).sum(1, keepdim=True).pow(0.5)))

    def extra_repr(self) -> str:
        return (f"n_data={self.n_data}, feat_dim={self.feat_dim}, nce_k={self.nce_k}, "
                f"nce_t={self.nce_t}, nce_mom={self.nce_mom}, mode={self.mode!r}, "
                f"seed={self.seed}, {super().extra_repr()}")


def _dim(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def _one(maps, side: str) -> torch.Tensor:
    """The one pooled map of ``side`` (a tensor, or a list of one as ``forward`` gets)."""
    if isinstance(maps, torch.Tensor):
        return maps
    maps = list(maps)
    if len(maps) != 1:
        raise ValueError(f"feature loss 'crd' reads one pooled vector per model; the {side} "
                         f"gave {len(maps)}")
    return maps[0]


register_feature_loss(
    "crd",
    "contrastive representation distillation: embeddings of the pooled vectors contrasted "
    "with K negatives from a momentum memory bank, NCE both ways (per batch; reference "
    "γ=0.8; needs the training set's labels and each sample's index)",
    params={"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_mom": 0.5, "mode": "exact",
            "seed": 0},
)(CRD)
