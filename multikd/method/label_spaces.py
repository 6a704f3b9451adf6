"""Teachers that know only part of the student's classes, merged into one student.

A *partial* teacher was trained on the classes ``S_k`` (``train-teacher --classes``), a list
of student class indices in the order of its ``m_k`` outputs. :class:`ClassMaps` holds the
K lists over the student's C classes (``None`` for a teacher of every class) and does what
the rest of the package needs to treat such teachers like any other:

- **one tensor per batch**: each teacher's ``[B, m_k]`` logits are placed into ``[B, C]``
  at ``S_k``, every other entry :data:`MASKED_LOGIT` (:meth:`ClassMaps.scatter`), so the
  ensemble's ``[K,B,C]`` contract, the teacher cache and the strategies stay as they are:
  the softmax over C of a scattered row is exactly 0 off ``S_k`` and equals the teacher's
  own softmax on ``S_k`` (so its CE against a label it knows, its entropy and its argmax are
  its own);
- **restricted, renormalised distillation** (Vongkulbhisal, Vinayavekhin & Visentini-
  Scarzanella, "Unifying Heterogeneous Classifiers with Distillation", CVPR 2019, eq. 4-5):
  teacher k is compared with the student's distribution restricted to ``S_k`` and
  renormalised, ``q_k(c) = q(c) / sum_{c' in S_k} q(c')``, which is the softmax of the
  student logits ``s[S_k]``; so the per-teacher loss is the configured logit loss on
  ``(s[:, S_k], t_k)`` (:meth:`ClassMaps.restrict`), e.g. for KD
  ``T^2 KL(softmax(t_k / T) || softmax(s[S_k] / T))``. The paper gives no public code;
  this is its formula;
- **a teacher never votes on a class it does not know** (:meth:`ClassMaps.votes`): on a
  labelled sample of class c, only the teachers with ``c in S_k`` get weight; the strategy's
  weights are restricted to them and renormalised (:func:`restrict_weights`); on an
  unlabelled sample every teacher votes (each on its own classes, as in the paper, whose
  transfer set has no labels);
- strategies that read the teachers' distributions see each teacher's own softmax, 0 off
  its classes: ``ebkd``'s entropy is the teacher's over its classes; ``aekd`` compares the
  gradients of the *unrestricted* KL over all C classes (a heuristic for partial teachers,
  not the restricted loss's gradient); the learned strategies are refused;
- **naive concatenation**, the baseline the paper compares against
  (``loss.label_merge: concat``, :meth:`ClassMaps.concatenate`): one teacher over C whose
  logit for class c is the mean of the logits of the teachers that know c (for disjoint
  class sets: the teachers' logit vectors side by side), distilled as one teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from multikd.errors import ConfigError

MASKED_LOGIT = -65504.0
"""The logit a partial teacher gets for a class it does not know: the lowest float16,
exact in every floating dtype a teacher runs or is cached in, and so far below any real
logit that ``softmax`` gives it probability 0 exactly (``exp(-65504 - max)`` underflows)."""

LABEL_MERGES = ("restricted", "concat")
"""``loss.label_merge``: how partial teachers are distilled (see the module docstring)."""

NOT_KNOWN = -100
"""A teacher-local label for a class the teacher does not know (``cross_entropy``'s
``ignore_index``, like an unlabelled sample)."""


def span(classes: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5`` (sorted), for messages and names."""
    values = sorted(int(c) for c in classes)
    parts, start = [], None
    for i, c in enumerate(values):
        if start is None:
            start = c
        if i + 1 == len(values) or values[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


class ClassMaps(torch.nn.Module):
    """The class lists of K teachers over a student's ``num_classes`` classes.

    ``classes[k]`` lists the student classes teacher k predicts, in the order of its outputs
    (None: all C, in order). Buffers (moved with the module): ``mask [K,C]`` (bool, teacher k
    knows class c) and ``local [K,C]`` (the position of class c among teacher k's outputs,
    :data:`NOT_KNOWN` where it has none). ``names`` label the teachers in error messages.
    """

    def __init__(self, classes: Sequence[Sequence[int] | None], num_classes: int,
                 names: Sequence[str] | None = None):
        super().__init__()
        self.num_classes = int(num_classes)
        self.classes = [None if c is None else [int(i) for i in c] for c in classes]
        names = list(names) if names is not None else [f"teacher {k}" for k in range(len(classes))]
        mask = torch.zeros(len(self.classes), self.num_classes, dtype=torch.bool)
        local = torch.full((len(self.classes), self.num_classes), NOT_KNOWN, dtype=torch.long)
        for k, (known, name) in enumerate(zip(self.classes, names)):
            if known is None:
                mask[k] = True
                local[k] = torch.arange(self.num_classes)
                continue
            outside = [c for c in known if not 0 <= c < self.num_classes]
            if outside or not known or len(set(known)) != len(known):
                what = (f"classes {span(outside)} lie outside the student's label space "
                        f"0..{self.num_classes - 1}" if outside
                        else "its class list is empty or repeats a class")
                raise ConfigError(
                    f"teacher {name!r}: {what}; teachers[].classes must list distinct student "
                    "class indices, in the order of the teacher's outputs (as its "
                    "train-teacher --classes did)"
                )
            index = torch.tensor(known)
            mask[k, index] = True
            local[k, index] = torch.arange(len(known))
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("local", local, persistent=False)
        self._index = [None if c is None else torch.tensor(c) for c in self.classes]
        self.partial = any(c is not None for c in self.classes)

    @property
    def num_teachers(self) -> int:
        return len(self.classes)

    def uncovered(self) -> list[int]:
        """The student classes no teacher knows."""
        return torch.nonzero(~self.mask.any(0)).flatten().tolist()

    def outputs(self, k: int) -> int:
        """How many logits teacher k returns."""
        return self.num_classes if self.classes[k] is None else len(self.classes[k])

    def index(self, k: int, device: torch.device) -> torch.Tensor | None:
        """Teacher k's classes as a long tensor on ``device`` (None: every class)."""
        index = self._index[k]
        if index is not None and index.device != device:
            index = self._index[k] = index.to(device)
        return index

    def scatter(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[K,B,C]`` from each teacher's ``[B, m_k]`` logits: teacher k's values at its
        classes, :data:`MASKED_LOGIT` elsewhere."""
        rows = []
        for k, z in enumerate(logits):
            index = self.index(k, z.device)
            if index is None:
                rows.append(z)
                continue
            full = z.new_full((z.shape[0], self.num_classes), MASKED_LOGIT)
            rows.append(full.index_copy(1, index, z))
        return torch.stack(rows)

    def restrict(self, k: int, student: torch.Tensor, teacher: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher k's view: the student logits on its classes ``s[:, S_k]``, its own logits
        (taken back out of the scattered ``teacher [B,C]``) and the labels as positions among
        its classes (:data:`NOT_KNOWN` for a class it does not know or an unlabelled sample)."""
        index = self.index(k, student.device)
        if index is None:
            return student, teacher, labels
        return (student.index_select(1, index), teacher.index_select(1, index),
                self.local_labels(k, labels))

    def local_labels(self, k: int, labels: torch.Tensor) -> torch.Tensor:
        """``labels [B]`` as positions among teacher k's classes (:data:`NOT_KNOWN` where the
        teacher does not know the class; unlabelled samples, -100, stay -100)."""
        known = labels >= 0
        local = self.local[k].index_select(0, labels.clamp(min=0))
        return torch.where(known, local, NOT_KNOWN)

    def knows(self, labels: torch.Tensor) -> torch.Tensor:
        """``[K,B]`` bool: teacher k knows sample i's label (False for unlabelled samples)."""
        known = self.mask.index_select(1, labels.clamp(min=0))
        return known & (labels >= 0).unsqueeze(0)

    def votes(self, labels: torch.Tensor) -> torch.Tensor:
        """``[K,B]`` bool: teacher k takes part on sample i, i.e. knows its label, or the
        sample has none (then every teacher takes part, on its own classes)."""
        return self.knows(labels) | (labels < 0).unsqueeze(0)

    def concatenate(self, logits: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
        """``[1,B,C]``: the naive merge of scattered teacher logits ``[K,B,C]`` (of the
        teachers ``rows``, default all): per class the mean logit of the teachers that know
        it (0 where none does)."""
        mask = self.mask
        if rows is not None and len(rows) != mask.shape[0]:
            mask = mask.index_select(0, torch.tensor(list(rows), device=mask.device))
        total = torch.where(mask.unsqueeze(1), logits,
                            torch.zeros((), dtype=logits.dtype, device=logits.device)).sum(0)
        count = mask.sum(0).clamp(min=1).to(total.dtype)
        return (total / count).unsqueeze(0)


def restrict_weights(weights: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """A strategy's weights ``[K,B]`` restricted to the teachers that vote on each sample
    and renormalised: ``w'_ki = v_ki w_ki / sum_j v_ji w_ji``; where the strategy gave the
    voting teachers no weight at all, uniform over them; a sample no teacher votes on (a
    labelled class no teacher knows) gets weight 0 everywhere: it learns from its label."""
    votes = votes.to(weights.dtype)
    kept = weights * votes
    total = kept.sum(0, keepdim=True)
    uniform = votes / votes.sum(0, keepdim=True).clamp(min=1)
    return torch.where(total > 0, kept / total.clamp(min=torch.finfo(weights.dtype).tiny),
                       uniform)
