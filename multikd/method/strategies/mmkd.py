"""MMKD: per-sample teacher weights from meta-learned networks (Zhang, Chen & Wang, ICME
2023, "Adaptive Multi-Teacher Knowledge Distillation with Meta-Learning").

Equal to the public code, github.com/Rorozhl/MMKD (read at its last commit):
``train_meta.py`` (``inner_objective``, ``outer_objective``, the training loop, defaults),
``models/meta_util.py`` ``LogitsWeight`` / ``FeatureWeight`` / ``MatchFeature`` /
``Embed``, ``helper/meta_optimizer.py`` ``MetaSGD``, ``dataset/buffer.py`` ``HardBuffer``,
``distiller_zoo/KD.py`` ``DistillKL(is_ca=True)``. Per batch of B samples, K teachers, C
classes:

Weights. ``w = softmax(L_2 ReLU(L_1 [t_1 .. t_K, s]))`` from the teachers' logits and the
student's (detached), ``L_1: C(K+1) -> C(K+1)/2`` (``LogitsWeight``); with features
``v = softmax(M_2 ReLU(M_1 [G_1 .. G_K, G_s]))`` from the batch Gram matrices
``G = F F^T [B,B]`` of the flattened last-stage maps of every teacher and of the student
(detached), ``M_1: B(K+1) -> B(K+1)/2`` (``FeatureWeight``). Loss of the student's step:
``CE + sum_k mean_i w_ik KL_ik + gamma mean_i sum_k v_ik MSE_ki``, ``KL`` T^2-scaled per
sample, ``MSE`` through ``Embed`` (1x1 conv with bias + BN + ReLU; multikd's ``mmkd``
adapter, which pools the student to the teacher's size when it is larger and the teacher to
the student's otherwise, as ``MatchFeature`` does). README command: ``-r 1 -a 1 -b 100``,
so ``loss.gamma`` 100 (the reference's ``--beta``; its main step ignores ``-r`` and ``-a``).

Meta step, after the student's step when the 0-based step index is a multiple of
``meta_freq`` (5) or the epoch's last: on a batch of B samples drawn from the hard buffer,

1. two virtual SGD steps of the student and its adapters on ``beta KD_w + gamma FEAT_v``
   (``matching_only``) and one on the CE, with the student optimizer's learning rate,
   momentum, weight decay and Nesterov flag and its momentum buffers;
2. the CE of the result, differentiated back through the three steps by ``MetaSGD
   .meta_backward``'s recursion (``a_0`` = the final CE gradient, ``a_1`` = 0; for each
   step back ``X = sum g . (-lr a_0 + a_1)`` with ``g`` the step's gradient on the graph,
   the weight networks accumulate ``dX``, and ``a_0 <- a_0 (1 - lr wd) + wd a_1 + dX/dtheta``,
   ``a_1 <- momentum a_1 - lr momentum a_0``);
3. an Adam step (lr ``meta_lr`` 1e-3, weight decay ``meta_wd`` 1e-4) of both weight networks;
4. the student, its adapters and its optimizer are left exactly as they were (the
   reference's ``--rollback``), but for their BatchNorm running statistics: the reference
   restores the weights by ``load_state_dict`` and then runs the first virtual step's
   objective once more with the student in train mode, which moves the statistics once on
   the meta batch. ``bn_update: true`` (the default) does the same: one train-mode
   forward of the student and its adapters on the meta batch, without gradients;
   ``bn_update: false`` leaves the statistics untouched too.

The hard buffer (``HardBuffer``, ``buffer_size`` 256): training batches are put in whole
until it holds ``buffer_size`` samples; after that each step's misclassified samples replace
as many randomly chosen ones; the meta batch is ``B`` distinct samples drawn from it. With
``hard_buffer: false`` the meta step uses the current batch (the reference without
``--hard_buffer``).

Deliberate deviations, each for a reason:

- The meta step runs on functional copies (``torch.func.functional_call``), so the
  virtual steps leave the student's BatchNorm statistics alone; only the one update of
  step 4 (``bn_update``) moves them, as the reference's extra forward does.
- The buffer keeps the teachers' outputs with the images and labels (the teachers are
  frozen and deterministic, so these equal the reference's second teacher pass); a batch
  size that does not divide ``buffer_size`` fills it exactly (the reference keeps
  stacking batches past its size and never counts it full, so it grows without bound).
- The last partial batch of an epoch (b < B samples; the reference ``continue``s past it):
  its ``b x b`` Gram matrices are padded with zero columns to ``b x B``, as if the missing
  samples had zero features, so every sample is trained on. ``data.drop_last: true`` gives
  the reference's behaviour. A batch larger than B is an error naming the batch size the
  network was built for.
- Random choices come from the strategy's own generator (saved in checkpoints), not
  NumPy's global one.
- The reference passes ``--convs`` positionally into ``Embed``'s ``factor`` argument, so
  its README command builds the plain 1x1 Embed anyway: that is the adapter here.
- Parameters without a gradient in a virtual step (the adapters in the CE step) are still
  moved by weight decay and momentum, as under the PyTorch 1.8 the reference was run with,
  whose ``zero_grad`` left zero gradients (PyTorch 2 sets them to None and SGD would skip
  them); the meta-gradient is the same either way.
- ``MetaSGD.meta_backward``'s recursion ignores Nesterov in the backward pass while the
  virtual steps use it; multikd transcribes both as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from multikd.errors import ConfigError, StrategyError
from multikd.method.losses import UNLABELED, labeled_ce
from multikd.method.strategies.base import (
    Selection,
    check_bool,
    check_positive_float,
    check_positive_int,
    register_strategy,
)
from multikd.method.strategies.learned import AfterStep, LearnedStrategy, StepRecord, StrategySpec


class LogitsWeight(nn.Module):
    """``models/meta_util.py`` ``LogitsWeight``: ``[t_1..t_K, s] -> softmax_K``."""

    def __init__(self, num_classes: int, num_teachers: int, factor: int = 2):
        super().__init__()
        n = num_classes * (num_teachers + 1)
        self.layer = nn.Linear(n, n // factor, bias=True)
        self.all_act = nn.Linear(n // factor, num_teachers)

    def forward(self, teacher_logits: torch.Tensor, student_logits: torch.Tensor):
        """``teacher_logits [K,B,C]``, ``student_logits [B,C]`` -> ``[B,K]``."""
        dtype = self.layer.weight.dtype
        x = torch.cat([*teacher_logits.to(dtype), student_logits.to(dtype)], dim=1)
        return torch.softmax(self.all_act(F.relu(self.layer(x))), dim=-1)


class FeatureWeight(nn.Module):
    """``models/meta_util.py`` ``FeatureWeight``: batch Gram matrices -> softmax_K, built
    for ``batch_size`` samples (a smaller batch is zero-padded, module doc)."""

    def __init__(self, batch_size: int, num_teachers: int, factor: int = 2):
        super().__init__()
        n = batch_size * (num_teachers + 1)
        self.batch_size = batch_size
        self.layer = nn.Linear(n, n // factor, bias=True)
        self.all_act = nn.Linear(n // factor, num_teachers)

    def forward(self, teacher_features, student_feature):
        b = student_feature.shape[0]
        if b > self.batch_size:
            raise StrategyError(
                f"strategy 'mmkd': its feature weight network was built for batches of "
                f"{self.batch_size} (strategy parameter batch_size, by default data.batch_size "
                f"per process), but a batch of {b} came; set strategy.params.batch_size to "
                "the training batch size"
            )
        dtype = self.layer.weight.dtype
        grams = [_gram(f.to(dtype)) for f in [*teacher_features, student_feature]]
        if b < self.batch_size:
            grams = [F.pad(g, (0, self.batch_size - b)) for g in grams]
        return torch.softmax(self.all_act(F.relu(self.layer(torch.cat(grams, dim=1)))), dim=-1)


class WeightNetworks(nn.Module):
    """MMKD's two weight networks (``feature`` is None without features)."""

    def __init__(self, logits: LogitsWeight, feature: FeatureWeight | None):
        super().__init__()
        self.logits = logits
        self.feature = feature


@register_strategy(
    "mmkd", "per-sample weights from meta-learned networks (Zhang et al., ICME 2023)"
)
class MMKD(LearnedStrategy):
    """MMKD's meta-learned per-sample logit and feature weights (module doc for the
    formulas and the reference). Parameters: ``meta_freq`` (5), ``meta_lr`` (1e-3),
    ``meta_wd`` (1e-4), ``hard_buffer`` (true), ``buffer_size`` (256), ``virtual_steps``
    (2, the matching steps before the CE step), ``batch_size`` (the Gram network's width;
    default: the run's batch size per process), ``bn_update`` (true: the reference's one
    BatchNorm-statistics update per meta step; false: statistics untouched), ``seed``."""

    needs_student = True
    needs_labels = "its meta objective is the CE on labelled, misclassified samples"
    reference = {
        "teacher_reduction": "sum",
        "feature_weights": "strategy",
        "adapter": "mmkd",
        "feature_stage": -1,
        "feature_start_epoch": 1,
    }

    def __init__(self, meta_freq: int = 5, meta_lr: float = 1e-3, meta_wd: float = 1e-4,
                 hard_buffer: bool = True, buffer_size: int = 256, virtual_steps: int = 2,
                 batch_size: int | None = None, bn_update: bool = True, seed: int = 0):
        super().__init__(seed)
        self.meta_freq = check_positive_int("mmkd", "meta_freq", meta_freq)
        self.meta_lr = check_positive_float("mmkd", "meta_lr", meta_lr)
        if isinstance(meta_wd, bool) or not isinstance(meta_wd, (int, float)) or meta_wd < 0:
            raise StrategyError(f"strategy 'mmkd': meta_wd must be a number >= 0, got {meta_wd!r}")
        self.meta_wd = float(meta_wd)
        self.hard_buffer = check_bool("mmkd", "hard_buffer", hard_buffer)
        self.buffer_size = check_positive_int("mmkd", "buffer_size", buffer_size)
        self.virtual_steps = check_positive_int("mmkd", "virtual_steps", virtual_steps)
        self.bn_update = check_bool("mmkd", "bn_update", bn_update)
        self.batch_size = (None if batch_size is None
                           else check_positive_int("mmkd", "batch_size", batch_size))
        self._buffer: dict | None = None
        self._last: dict | None = None

    # ------------------------------------------------------------------ build
    def build_networks(self, spec: StrategySpec) -> nn.Module:
        feature = None
        if spec.teacher_feature_shapes:
            size = self.batch_size or spec.batch_size
            if size is None:
                raise StrategyError(
                    "strategy 'mmkd' with features sizes its Gram-matrix network by the batch "
                    "size: give strategy.params.batch_size (the run sets it from data.batch_size)"
                )
            self.batch_size = size
            feature = FeatureWeight(size, spec.num_teachers)
        elif self.batch_size is None:
            self.batch_size = spec.batch_size
        return WeightNetworks(LogitsWeight(spec.num_classes, spec.num_teachers), feature)

    def build_optimizer(self, params):
        # fused: the step count stays a tensor (the loop and foreach forms read it on the host)
        return torch.optim.Adam(params, lr=self.meta_lr, weight_decay=self.meta_wd, fused=True)

    # ------------------------------------------------------------------ weights
    def weights_for(self, teacher_logits, student_logits, teacher_features=None,
                    student_feature=None):
        """``(w [K,B], v [K,B] or None)`` of the weight networks (on the graph of their
        parameters; the inputs are detached)."""
        nets = self.networks
        w = nets.logits(teacher_logits.detach(), student_logits.detach()).t()
        v = None
        if nets.feature is not None and teacher_features is not None:
            v = nets.feature([t.detach() for t in teacher_features], student_feature.detach()).t()
        return w, v

    def _select_in_context(self, ce, logits, labels, context):
        self._bound()
        features = self.networks.feature is not None
        if features and (context.teacher_features is None or context.student_feature is None):
            raise StrategyError(
                "strategy 'mmkd' was built with features but got none in its StepContext"
            )
        with torch.no_grad():
            w, v = self.weights_for(
                logits, context.student_logits, context.teacher_features, context.student_feature
            )
        return Selection(w, torch.ones_like(ce, dtype=torch.bool), feature_weights=v)

    # ------------------------------------------------------------------ hard buffer
    def observe(self, record: StepRecord) -> None:
        batch = {
            "x": record.x.detach(),
            "y": record.y.detach(),
            "t_logits": record.teacher_logits.detach(),
            "t_features": [f.detach() for f in record.teacher_features or []],
            # a feature module's maps, flat: teacher k's stage s at k * stages + s
            "t_maps": [m.detach() for maps in record.teacher_maps or [] for m in maps],
        }
        if not self.hard_buffer:
            self._last = batch
            return
        partial = self.spec is not None and self.spec.partial_labels
        buf = self._buffer
        if buf is None or buf["y"].shape[0] < self.buffer_size:
            if partial:  # only labelled samples: the meta objective is their CE (a host read
                batch = _take(batch, (batch["y"] != UNLABELED).nonzero().flatten())  # until full)
            room = self.buffer_size - (0 if buf is None else buf["y"].shape[0])
            part = _take(batch, slice(0, room))
            self._buffer = part if buf is None else _concat(buf, part)
            return
        wrong = (record.student_logits.argmax(1) != record.y) & (record.y != UNLABELED)
        b = wrong.shape[0]
        if b > self.buffer_size:  # rare: more samples than slots; one host read
            picked = wrong.nonzero().flatten()[: self.buffer_size]
            slots = self.draw(self.buffer_size, picked.numel()).to(wrong.device)
            _put(buf, slots, _take(batch, picked))
            return
        # without a host read: b distinct random slots; the misclassified samples take the
        # first ones in order, the others rewrite the slots after them with what they hold
        slots = self.draw(self.buffer_size, b).to(wrong.device)
        n_wrong = wrong.sum()
        rank = torch.where(wrong, wrong.cumsum(0) - 1, n_wrong + (~wrong).cumsum(0) - 1)
        slot = slots[rank]
        keep = _take(buf, slot)
        _put(buf, slot, _where(wrong, batch, keep))

    def meta_batch(self) -> dict:
        """The meta step's batch: ``batch_size`` distinct samples of the hard buffer (all of
        them when it holds fewer), or the current batch without a hard buffer."""
        if not self.hard_buffer:
            return self._last
        n = self._buffer["y"].shape[0]
        size = min(self.batch_size or n, n)
        return _take(self._buffer, self.draw(n, size).to(self._buffer["y"].device))

    # ------------------------------------------------------------------ meta step
    def after_step(self, step: AfterStep) -> None:
        if step.step % self.meta_freq == 0 or step.step == step.steps_per_epoch - 1:
            self.meta_step(step.learner, step.optimizer)

    def meta_step(self, learner, optimizer) -> None:
        """One meta update of the weight networks (module doc, steps 1-4); the student, its
        adapters and ``optimizer`` are not changed; their BatchNorm statistics move once on
        the meta batch when ``bn_update`` is set (the reference's extra forward)."""
        self._bound()
        batch = self.meta_batch()
        grads = self.meta_gradients(learner, optimizer, batch)
        if self.bn_update and learner.student.training:
            with torch.no_grad():
                StudentPath(learner)(batch["x"])
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.networks.parameters(), grads):
            p.grad = g
        self.all_reduce_grads()
        self.optimizer.step()

    def meta_gradients(self, learner, optimizer, batch: dict | None = None) -> list[torch.Tensor]:
        """The weight networks' meta-gradients of one meta step (steps 1-2 of the module
        doc) on ``batch`` (default: a new :meth:`meta_batch`), one per parameter of
        :attr:`networks`; nothing else changes."""
        self._bound()
        if len(optimizer.param_groups) != 1:
            raise ConfigError("strategy 'mmkd' needs the student's optimizer to have one param group")
        group = optimizer.param_groups[0]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        momentum, nesterov = float(group["momentum"]), bool(group["nesterov"])
        path = StudentPath(learner)
        names = {id(p): n for n, p in path.named_parameters()}
        params = list(group["params"])
        missing = [i for i, p in enumerate(params) if id(p) not in names]
        if missing:
            raise ConfigError(
                "strategy 'mmkd' unrolls the student's optimizer steps, but the optimizer holds "
                "parameters outside the student and its adapters"
            )
        keys = [names[id(p)] for p in params]
        buffers = {n: b.detach().clone() for n, b in path.named_buffers()}
        batch = self.meta_batch() if batch is None else batch
        nets = list(self.networks.parameters())

        def run(theta, objective, create_graph):
            leaf = [t.detach().requires_grad_(True) for t in theta]
            with torch.enable_grad():
                loss = objective(leaf)
                grads = torch.autograd.grad(loss, leaf, create_graph=create_graph,
                                            allow_unused=True)
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaf, grads)]
            return leaf, loss, grads

        t_maps = _per_teacher(batch.get("t_maps") or [], learner.ensemble.num_teachers)

        def forward(theta, maps=None):
            return functional_call(path, ({**dict(zip(keys, theta)), **buffers},), (batch["x"],),
                                   {"teacher_maps": maps, "y": batch["y"]})

        def matching(theta):
            logits, feature, adapted, module_loss = forward(theta, t_maps)
            w, v = self.weights_for(batch["t_logits"], logits, batch["t_features"] or None,
                                    feature)
            per_teacher = learner.per_teacher_logit_loss(logits, batch["t_logits"], batch["y"])
            loss = learner.beta * (w * per_teacher).sum(0).mean()
            if v is not None:
                per_feature = (module_loss if module_loss is not None else
                               learner.per_teacher_feature_loss(adapted, batch["t_features"]))
                loss = loss + learner.gamma * (v * per_feature).sum(0).mean()
            return loss

        def outer(theta):
            logits = forward(theta)[0]
            if self.spec.partial_labels:  # the current batch may hold unlabelled samples
                return labeled_ce(logits, batch["y"])
            return F.cross_entropy(logits, batch["y"])

        theta = [p.detach().clone() for p in params]
        moment = [_momentum_buffer(optimizer, p) for p in params]
        visited = []
        for objective in [matching] * self.virtual_steps + [outer]:
            visited.append((theta, objective))
            _, _, grads = run(theta, objective, create_graph=False)
            theta, moment = _sgd_step(theta, moment, grads, lr, momentum, wd, nesterov)
        _, final, a0 = run(theta, outer, create_graph=False)
        a1 = [torch.zeros_like(g) for g in a0]
        net_grads = [torch.zeros_like(p) for p in nets]
        for theta_k, objective in reversed(visited):
            leaf, _, grads = run(theta_k, objective, create_graph=True)
            with torch.enable_grad():
                x = sum((g * (a * -lr + b)).sum() for g, a, b in zip(grads, a0, a1))
                d = (torch.autograd.grad(x, leaf + nets, allow_unused=True) if x.requires_grad
                     else [None] * (len(leaf) + len(nets)))
            hv = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(leaf, d)]
            for acc, g in zip(net_grads, d[len(leaf):]):
                if g is not None:
                    acc.add_(g.detach())
            a0, a1 = (
                [a * (1 - lr * wd) + wd * b + h for a, b, h in zip(a0, a1, hv)],
                [b * momentum - lr * momentum * a for a, b in zip(a0, a1)],
            )
        self.record_loss(final)
        return net_grads

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict:
        return {"buffer": self._buffer, "last": self._last}

    def load_extra_state(self, state: dict) -> None:
        if set(state) != {"buffer", "last"}:
            raise StrategyError(f"strategy 'mmkd' expects buffer and last, got {sorted(state)}")
        device = next(iter(self.networks.parameters())).device
        self._buffer = _to(state["buffer"], device)
        self._last = _to(state["last"], device)


class StudentPath(nn.Module):
    """The student, its adapters and its feature modules as one module (shared, not
    copied), whose forward gives ``(logits, tapped feature or None, adapted features,
    feature-module loss [K,B] or None)``: what MMKD's virtual steps evaluate with
    :func:`torch.func.functional_call`. The feature modules' loss (against
    ``teacher_maps``, labels ``y``) is computed inside, so it sees the virtual weights."""

    def __init__(self, learner):
        super().__init__()
        self.student = learner.student
        self.adapters = learner.adapters
        self.feature_modules = learner.feature_modules
        self._learner = [learner]

    def forward(self, x, teacher_maps=None, y=None):
        learner = self._learner[0]
        logits, feature, adapted, maps = learner._student_pass(x)
        module_loss = None
        if teacher_maps is not None and not learner.hint_loss:
            module_loss = learner.per_teacher_feature_loss(adapted, None, maps, teacher_maps, y)
        return logits, feature, adapted, module_loss


def _per_teacher(flat: list, k: int) -> list[list[torch.Tensor]] | None:
    """The flat list of the teachers' maps (the buffer's ``t_maps``) as one list per teacher."""
    if not flat:
        return None
    stages = len(flat) // k
    return [flat[i * stages:(i + 1) * stages] for i in range(k)]


def _gram(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.reshape(feature.shape[0], -1)
    return flat @ flat.t()


def _momentum_buffer(optimizer, p):
    buf = optimizer.state.get(p, {}).get("momentum_buffer")
    return None if buf is None else buf.detach().clone()


def _sgd_step(theta, moment, grads, lr, momentum, wd, nesterov):
    """``torch.optim.SGD``'s update (dampening 0) on copies: ``d = g + wd p``; ``m = mu m +
    d`` (``m = d`` when there is none yet); ``d = d + mu m`` (Nesterov) or ``m``; ``p - lr d``."""
    new_theta, new_moment = [], []
    with torch.no_grad():
        for p, m, g in zip(theta, moment, grads):
            d = g.add(p, alpha=wd) if wd != 0 else g
            if momentum != 0:
                m = d.clone() if m is None else m.mul(momentum).add_(d)
                d = d.add(m, alpha=momentum) if nesterov else m
            new_theta.append(p.add(d, alpha=-lr))
            new_moment.append(m)
    return new_theta, new_moment


def _take(batch: dict, index) -> dict:
    return {
        "x": batch["x"][index], "y": batch["y"][index], "t_logits": batch["t_logits"][:, index],
        "t_features": [f[index] for f in batch["t_features"]],
        "t_maps": [m[index] for m in batch.get("t_maps", [])],
    }


def _concat(a: dict, b: dict) -> dict:
    return {
        "x": torch.cat([a["x"], b["x"]]), "y": torch.cat([a["y"], b["y"]]),
        "t_logits": torch.cat([a["t_logits"], b["t_logits"]], dim=1),
        "t_features": [torch.cat([f, g]) for f, g in zip(a["t_features"], b["t_features"])],
        "t_maps": [torch.cat([f, g]) for f, g in zip(a.get("t_maps", []), b.get("t_maps", []))],
    }


def _put(buf: dict, slots: torch.Tensor, batch: dict) -> None:
    buf["x"].index_copy_(0, slots, batch["x"])
    buf["y"].index_copy_(0, slots, batch["y"])
    buf["t_logits"].index_copy_(1, slots, batch["t_logits"])
    for f, g in zip(buf["t_features"] + buf.get("t_maps", []),
                    batch["t_features"] + batch.get("t_maps", [])):
        f.index_copy_(0, slots, g)


def _where(mask: torch.Tensor, a: dict, b: dict) -> dict:
    """Per sample: ``a``'s entries where ``mask`` [B], else ``b``'s."""
    def pick(x, y, dim=0):
        shape = [1] * x.dim()
        shape[dim] = -1
        return torch.where(mask.view(shape), x, y)

    return {
        "x": pick(a["x"], b["x"]), "y": pick(a["y"], b["y"]),
        "t_logits": pick(a["t_logits"], b["t_logits"], dim=1),
        "t_features": [pick(f, g) for f, g in zip(a["t_features"], b["t_features"])],
        "t_maps": [pick(f, g) for f, g in zip(a.get("t_maps", []), b.get("t_maps", []))],
    }


def _to(batch: dict | None, device) -> dict | None:
    if batch is None:
        return None
    return {
        "x": batch["x"].to(device), "y": batch["y"].to(device),
        "t_logits": batch["t_logits"].to(device),
        "t_features": [f.to(device) for f in batch["t_features"]],
        "t_maps": [m.to(device) for m in batch.get("t_maps", [])],
    }
