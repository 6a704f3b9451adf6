"""Label-space routing: what each teacher sees and says when not every sample has a label
and not every teacher knows every class.

- :func:`strategy_ce`: the teachers' CE ``[K,B]`` a strategy reads, with a label-free
  stand-in (:func:`unlabeled_teacher_ce`, ``loss.unlabeled_ce``) where a sample has no
  label or is of a class the teacher does not know;
- :func:`route_selection`: a teacher never votes on a class it does not know (its weight
  there is moved to the teachers that know it, :func:`~multikd.method.label_spaces.restrict_weights`);
- :func:`partial_teacher_problems`: what teachers of part of the label space
  (``teachers[].classes``) cannot be combined with.

The class geometry itself (which teacher knows which class) is
:class:`~multikd.method.label_spaces.ClassMaps`.
"""

from __future__ import annotations

import torch

from multikd.errors import ConfigError
from multikd.method.ensemble import EnsembleOutput
from multikd.method.label_spaces import ClassMaps, restrict_weights
from multikd.method.losses import UNLABELED, upcast
from multikd.method.strategies import Selection, Strategy


def unlabeled_teacher_ce(ce: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                         rule: str, known: torch.Tensor | None = None) -> torch.Tensor:
    """The teachers' CE ``[K,B]`` that strategies read, with each unlabelled sample's entry
    (0 from ``cross_entropy``'s ``ignore_index``) replaced by a label-free stand-in:

    - ``entropy``: ``H(softmax(t_ki)) = -sum_c p log p``, teacher k's CE against its own
      prediction (low for a confident teacher, as CE is low for a correct one);
    - ``labeled``: teacher k's mean CE over the batch's labelled samples (the batch's verdict
      on the teacher, shared by its unlabelled samples); a batch without labelled samples
      falls back to ``entropy``.

    ``known [K,B]`` (default: every teacher knows every labelled sample) marks the entries
    that are real CEs: a teacher of part of the label space has none on a sample of a class
    it does not know, and gets the stand-in there too (``labeled``: its mean over the
    samples it knows).
    """
    known = (y != UNLABELED).unsqueeze(0) if known is None else known
    entropy = torch.special.entr(torch.softmax(upcast(logits), dim=-1)).sum(-1)
    if rule == "entropy":
        proxy = entropy
    else:
        count = known.sum(1, keepdim=True)
        zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
        mean = torch.where(known, ce, zero).sum(1, keepdim=True) / count.clamp(min=1)
        proxy = torch.where(count > 0, mean.expand_as(ce), entropy)
    return torch.where(known, ce, proxy)


def rows(per_teacher: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The rows ``ids`` of a ``[K, ...]`` tensor (itself when they are all of them, in order)."""
    if len(ids) == per_teacher.shape[0]:
        return per_teacher
    return per_teacher.index_select(0, torch.tensor(ids, device=per_teacher.device))


def strategy_ce(out: EnsembleOutput, y: torch.Tensor, ids: list[int],
                class_maps: ClassMaps | None, partial_labels: bool, rule: str) -> torch.Tensor:
    """The teachers' CE ``[K,B]`` that the strategy reads: their CE where they know the
    sample's label, the ``rule`` stand-in where it is unlabelled or of a class the teacher
    does not know (``ids``: the ensemble index of each row of ``out``)."""
    if class_maps is not None:
        known = rows(class_maps.knows(y), ids)
        return unlabeled_teacher_ce(out.ce, out.logits, y, rule, known=known)
    if partial_labels:
        return unlabeled_teacher_ce(out.ce, out.logits, y, rule)
    return out.ce


def route_selection(selection: Selection, class_maps: ClassMaps, y: torch.Tensor,
                    ids: list[int]) -> Selection:
    """``selection`` with each teacher's weight kept only on samples of classes it knows."""
    votes = rows(class_maps.votes(y), ids)
    return Selection(restrict_weights(selection.weights, votes), selection.kept & votes,
                     selection.feature_weights, selection.scale)


def partial_teacher_problems(strategy: Strategy, logit_loss: str, use_features: bool,
                             feature_weights: str, label_merge: str) -> None:
    """Raise a :class:`~multikd.errors.ConfigError` listing what teachers of part of the
    label space cannot be combined with, if any."""
    problems = []
    if logit_loss == "dkd":
        problems.append(
            "loss.logit_loss dkd splits the loss at the target class, which a teacher "
            "does not have for images of classes it does not know: use kd, mse or dist"
        )
    if strategy.learns:
        problems.append(
            f"strategy {strategy.name!r} learns weights over teachers of one label space "
            "(its source defines nothing else): use uniform, ce-filter, ca-mkd, ebkd, ..."
        )
    if use_features and feature_weights == "teacher-head":
        problems.append(
            "loss.feature_weights teacher-head scores each teacher's classifier head "
            "against the label, which a partial teacher's head may not know: set "
            "loss.feature_weights strategy or uniform"
        )
    if label_merge == "concat" and (strategy.name != "uniform" or use_features):
        problems.append(
            "loss.label_merge concat merges the teachers into one teacher over all "
            "classes, so there is nothing to weight and no per-teacher feature: use "
            "strategy uniform and gamma 0"
        )
    if problems:
        raise ConfigError("with teachers of part of the label space (teachers[].classes): "
                          + "; ".join(problems))
