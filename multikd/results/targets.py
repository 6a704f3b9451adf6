"""Published targets: a suite's ``targets:`` section, and how a table reads our runs against it.

A suite (``experiments/README.md``) lists the numbers its paper published, one entry per
teacher set, student and column label::

    targets:
      - {teachers: r32x4x3, student: vgg8, label: ca-mkd+feat, top1: 75.0, epoch: best,
         runs: 3, source: "CA-MKD, ICASSP 2022, Table 1"}

``label`` is the run label of the suite (``<strategy label>``, ``<strategy label>+feat`` or
``student``), ``epoch`` says whether the number is the best test accuracy over the epochs
(``best``, what most KD code prints) or the accuracy after the last epoch (``last``), ``runs``
how many runs it averages (omit it when the source does not say).

``multikd bench`` copies the suite into ``OUT/suite.yaml``; :func:`read_targets` takes the
targets from there, and :func:`published_cells` compares each with the runs of its table
cell, always on the target's own metric (a best-epoch target against our best-epoch
accuracy, whatever metric the table shows): our mean ± sample std (n), the difference
ours − published, and where the published number lies against our two-sided 95% Student-t
interval of the mean: ``inside``, ``below`` (we are above it) or ``above`` (we fall short).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from multikd.errors import ConfigError

log = logging.getLogger(__name__)

SUITE_FILE = "suite.yaml"  # the copy of the suite that ``multikd bench`` writes into OUT
EPOCHS = {"best": "best_test_acc", "last": "last_test_acc"}
TARGET_KEYS = {
    "teachers": "teacher set name (from teacher_sets)",
    "student": "student architecture (from the set's pair)",
    "label": "run label: a strategy label, <label>+feat, or student",
    "top1": "the published top-1 accuracy in percent",
    "epoch": "best (best test epoch) or last (after the last epoch)",
    "runs": "number of runs the published number averages (omit when unknown)",
    "source": "where it is published: paper and table, or repository and file",
}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Target:
    """One published number of a suite's ``targets:``."""

    teachers: str
    student: str
    label: str
    top1: float
    epoch: str
    source: str
    runs: int | None = None


@dataclass(frozen=True)
class Comparison:
    """A target against the runs of its table cell (accuracies in %)."""

    target: Target
    mean: float
    std: float
    n: int
    low: float
    high: float

    @property
    def difference(self) -> float:
        """Ours − published, in accuracy points."""
        return self.mean - self.target.top1

    @property
    def verdict(self) -> str:
        """``inside``, ``below`` or ``above`` (where the published number lies against our
        95% interval), ``no interval`` for a single run, ``no runs`` for an empty cell."""
        if self.n == 0:
            return "no runs"
        if self.n < 2:
            return "no interval"
        if self.target.top1 < self.low:
            return "below"
        if self.target.top1 > self.high:
            return "above"
        return "inside"

    def text(self) -> str:
        """``published 75.00 best-epoch (3 runs; SOURCE); ours best-epoch 74.10 ± 0.30 (3),
        Δ -0.90, above our 95% CI [73.35, 74.85]``."""
        t = self.target
        runs = f"{t.runs} runs; " if t.runs else ""
        head = f"{t.label}: published {t.top1:.2f} {t.epoch}-epoch ({runs}{t.source})"
        if self.n == 0:
            return f"{head}; no {t.epoch}-epoch runs of ours"
        spread = "—" if math.isnan(self.std) else f"{self.std:.2f}"
        ours = f"ours {t.epoch}-epoch {self.mean:.2f} ± {spread} ({self.n}), Δ {self.difference:+.2f}"
        if self.n < 2:
            return f"{head}; {ours}, one run: no 95% CI"
        return (f"{head}; {ours}, published {self.verdict} our 95% CI "
                f"[{self.low:.2f}, {self.high:.2f}]")


def parse_targets(raw, where: str) -> list[Target]:
    """The ``targets:`` list of a suite, each entry checked on its own (the suite checks
    that its set, student and label exist)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'targets' must be a list of {{{', '.join(TARGET_KEYS)}}}")
    targets = []
    for i, entry in enumerate(raw):
        at = f"{where}: targets[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{at} must be a mapping with keys {', '.join(TARGET_KEYS)}")
        unknown = sorted(set(entry) - set(TARGET_KEYS))
        missing = [k for k in TARGET_KEYS if k != "runs" and k not in entry]
        if unknown or missing:
            valid = "\n  ".join(f"{k}: {v}" for k, v in TARGET_KEYS.items())
            raise ConfigError(f"{at}: unknown key(s) {unknown}, missing key(s) {missing}. "
                              f"Keys:\n  {valid}")
        top1 = entry["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
            raise ConfigError(f"{at}: 'top1' must be an accuracy in percent, got {top1!r}")
        if entry["epoch"] not in EPOCHS:
            raise ConfigError(f"{at}: 'epoch' must be one of {list(EPOCHS)}, got "
                              f"{entry['epoch']!r}")
        runs = entry.get("runs")
        if runs is not None and (isinstance(runs, bool) or not isinstance(runs, int) or runs < 1):
            raise ConfigError(f"{at}: 'runs' must be a positive integer (or left out when the "
                              f"source does not say), got {runs!r}")
        for key in ("teachers", "student", "label", "source"):
            if not isinstance(entry[key], str) or not entry[key].strip():
                raise ConfigError(f"{at}: {key!r} must be non-empty text, got {entry[key]!r}")
        targets.append(Target(entry["teachers"], entry["student"], entry["label"],
                              float(top1), entry["epoch"], entry["source"], runs))
    seen = set()
    for t in targets:
        key = (t.teachers, t.student, t.label, t.epoch)
        if key in seen:
            raise ConfigError(f"{where}: two targets for {key}; keep one")
        seen.add(key)
    return targets


def read_targets(roots) -> tuple[list[Target], dict[str, list[str]]]:
    """The targets and teacher sets of the ``suite.yaml`` in each folder of ``roots``
    (``([], {})`` where there is none); an unreadable file is skipped with a warning."""
    import yaml

    targets, sets = [], {}
    for root in roots:
        path = Path(root) / SUITE_FILE
        if not path.is_file():
            continue
        try:
            raw = yaml.safe_load(path.read_text())
            if not isinstance(raw, dict):  # a suite recorded without its text
                continue
            found = parse_targets(raw.get("targets"), str(path))
        except (OSError, yaml.YAMLError, ConfigError) as err:
            log.warning("cannot read the targets of %s (%s); no published column", path, err)
            continue
        targets += [t for t in found if t not in targets]
        sets |= {k: list(v) for k, v in (raw.get("teacher_sets") or {}).items()
                 if isinstance(v, list)}
    return targets, sets


def interval(values: pd.Series, confidence: float = CONFIDENCE) -> tuple[float, float, int, float, float]:
    """(mean, sample std, n, low, high): the two-sided Student-t interval of the mean
    (NaN bounds below two values)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    n = int(values.count())
    if n == 0:
        return math.nan, math.nan, 0, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, n, math.nan, math.nan
    from scipy import stats

    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, n, mean - half, mean + half
