"""Where a bench is in its plan: one line per finished unit of work (a teacher run, a
lockstep group), ``[12/32 runs, 3 min elapsed, ETA 5 min] a+b/s0``, by logging, so
``--quiet`` hides it.

The ETA spreads the time this call has spent over the epochs it has trained so far (runs
found finished cost nothing) and extends it to the epochs still to train: a run of E epochs
counts E, whatever its architecture, so the estimate firms up as units finish.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def duration_text(seconds: float) -> str:
    """``"40 s"``, ``"3 min"``, ``"1.5 h"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlanProgress:
    """Counts runs and epochs done of a plan's ``total_runs`` runs and ``pending_epochs``
    epochs (those of the runs not finished when the bench started)."""

    def __init__(self, total_runs: int, pending_epochs: int, clock=time.perf_counter):
        self.total_runs = total_runs
        self.pending_epochs = pending_epochs
        self.runs_done = 0
        self.epochs_done = 0
        self._clock = clock
        self._start = clock()

    def unit_done(self, name: str, runs: int, epochs: int) -> str:
        """Note a finished unit of ``runs`` runs that trained ``epochs`` epochs now (0 for
        runs that were already finished); log and return its progress line."""
        self.runs_done += runs
        self.epochs_done += epochs
        elapsed = self._clock() - self._start
        left = max(self.pending_epochs - self.epochs_done, 0)
        if not left:
            eta = "ETA 0 s"
        elif self.epochs_done:
            eta = f"ETA {duration_text(elapsed / self.epochs_done * left)}"
        else:
            eta = "ETA unknown"
        line = (f"[{self.runs_done}/{self.total_runs} runs, {duration_text(elapsed)} elapsed, "
                f"{eta}] {name}")
        log.info("%s", line)
        return line
