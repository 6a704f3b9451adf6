"""The bench's independent units of work (one teacher run, one lockstep group) run in
``jobs`` local worker processes at once.

Every unit is a whole, seeded run (or group of runs) with its own run directories, so the
units share nothing while they train: the numbers each writes are those of the same unit
run alone, whatever the number of workers and the order they finish in. With ``jobs=1``
the units run one after the other in this process (no worker is started).

Workers are started with ``spawn`` (a forked child of a process that has already used
torch's thread pools can hang) and each uses ``threads`` torch threads, so ``jobs *
threads`` should not exceed the CPU cores.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

import torch

Unit = tuple[Callable, tuple]  # a module-level function and its (picklable) arguments


def run_units(units: Sequence[Unit], jobs: int, threads: int | None,
              on_done: Callable[[int, Any], None] | None = None) -> list:
    """Call every ``function(*args)`` of ``units``; their results in the order given.
    ``on_done(i, result)`` is called here, in this process, as each unit ``i`` ends.

    The first unit that raises stops the others from starting and its error is raised
    here (runs that were under way keep what their checkpoints hold, so the same command
    resumes them).
    """
    report = on_done or (lambda i, result: None)
    if jobs <= 1 or len(units) <= 1:
        results = []
        for i, (function, args) in enumerate(units):
            results.append(function(*args))
            report(i, results[-1])
        return results
    level = logging.getLogger("multikd").getEffectiveLevel()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(units)), mp_context=context,
                             initializer=_start_worker, initargs=(threads, level)) as pool:
        futures = [pool.submit(function, *args) for function, args in units]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            ended = [i for i, future in enumerate(futures) if future in done]
            failed = [i for i in ended if futures[i].exception() is not None]
            if failed:
                for future in pending:
                    future.cancel()
                raise futures[failed[0]].exception()
            for i in ended:
                report(i, futures[i].result())
        return [future.result() for future in futures]


def _start_worker(threads: int | None, level: int) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(message)s")
    logging.getLogger("multikd").setLevel(level)
