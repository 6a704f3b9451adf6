"""Run directory: the four files a run writes, each written atomically, and the run's state.

::

    RUN_DIR/config.yaml     resolved RunConfig (loads back to an equal config)
    RUN_DIR/metrics.csv     one row per finished epoch
    RUN_DIR/checkpoint.pt   last epoch: model (+arch, num_classes) and all training state
    RUN_DIR/predictions.npz the final model's test predictions (``pred``, ``label``: one
                            int per test image, in the split's order), written before
                            summary.json; paired statistics over test images read it
    RUN_DIR/summary.json    written when the run finishes (status "finished")

Every file is written to a temporary file in the same folder and moved into place with
``os.replace``, so a reader (or a resumed run) never sees a half-written file, whenever the
writer is killed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from pathlib import Path

import torch

from multikd.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported)
from multikd.train.config import RunConfig, load_config, load_yaml, to_yaml
from multikd.errors import CheckpointError, MultikdError, StorageError, TrainingError

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, PREDICTIONS, SUMMARY)


def metrics_csv_text(rows: list[dict]) -> str:
    """CSV of ``rows``; columns in order of first appearance, floats at full precision."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return out.getvalue()


def continue_hint(run_dir: str | Path) -> str:
    """How a user continues the unfinished run in ``run_dir``."""
    return f"--resume {run_dir} (under multikd bench: the same bench command)"


def _first_sentence(err: Exception) -> str:
    """``Type: first sentence`` of an error (torch's read errors run to paragraphs)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else "no details"
    return f"{type(err).__name__}: {text.split('. ')[0]}"


class RunDir:
    """One run's folder: its files, its state, and safe ways to write them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def summary(self) -> dict | None:
        path = self.file(SUMMARY)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise TrainingError(
                f"{path} is unreadable ({err}); delete it, then --resume {self.path} writes it "
                f"again from {CHECKPOINT} (--overwrite would discard the "
                f"{self.finished_epochs()} finished epoch(s) in {METRICS})"
            ) from None

    def state(self) -> str:
        """``"empty"``, ``"finished"`` (summary says so) or ``"unfinished"`` (anything else)."""
        summary = self.summary()
        if summary is not None and summary.get("status") == "finished":
            return "finished"
        if any(self.file(name).exists() for name in RUN_FILES):
            return "unfinished"
        return "empty"

    def prepare_new(self, overwrite: bool) -> None:
        """Refuse to start over an existing run unless ``overwrite``.

        A run that stopped before its first epoch ended (a bad teacher checkpoint, say) left
        only its config.yaml: nothing trained can be lost, so a corrected command may start
        there afresh.
        """
        state = self.state()
        if state == "unfinished" and not self.has_progress():
            log.info("%s never finished an epoch; starting it afresh", self.path)
            return
        if state != "empty" and not overwrite:
            if state == "finished":
                raise TrainingError(
                    f"{self.path} already holds a finished run. Use --resume {self.path} to "
                    "see it, a new --out directory, or --overwrite to replace it"
                )
            raise TrainingError(
                f"{self.path} holds an unfinished run. Continue it with --resume {self.path}, "
                "or use a new --out directory, or --overwrite to start again"
            )

    def clear(self) -> None:
        """Remove the run files (and only those) so a fresh run starts clean."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)

    def write_config(self, config: RunConfig) -> None:
        atomic_write_text(self.file(CONFIG), to_yaml(config))

    def read_config(self) -> RunConfig:
        if not self.file(CONFIG).is_file():
            raise TrainingError(
                f"{self.path} holds no {CONFIG}; it is not a multikd run directory "
                "(check the path given to --resume)"
            )
        return load_config(self.file(CONFIG))

    def recorded_plugins(self) -> list:
        """The ``plugins`` records of the run's config.yaml, read without loading them
        (empty without a readable config)."""
        try:
            data = load_yaml(self.file(CONFIG))
        except MultikdError:
            return []
        records = data.get("plugins")
        return records if isinstance(records, list) else []

    def write_metrics(self, rows: list[dict]) -> None:
        with self._resumable_writes():
            atomic_write_text(self.file(METRICS), metrics_csv_text(rows))

    def finished_epochs(self) -> int:
        """How many epochs ``metrics.csv`` records (0 when it is missing or unreadable)."""
        try:
            with open(self.file(METRICS), newline="") as handle:
                return sum(1 for _ in csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error):
            return 0

    @contextlib.contextmanager
    def _resumable_writes(self):
        """A full disk while a run writes its progress or its final files says how to
        continue the run (``--resume`` after the last epoch writes the final files)."""
        try:
            yield
        except StorageError as err:
            raise StorageError(f"{err}, then continue the run with "
                               f"{continue_hint(self.path)}") from err

    def write_summary(self, summary: dict) -> None:
        with self._resumable_writes():
            atomic_write_text(self.file(SUMMARY), json.dumps(summary, indent=2) + "\n")

    def write_predictions(self, pred, label) -> None:
        """``predictions.npz`` with the predicted and true class of every test image
        (int16, the split's order), atomically."""
        import numpy as np

        buffer = io.BytesIO()
        np.savez_compressed(buffer, pred=np.asarray(pred, dtype=np.int16),
                            label=np.asarray(label, dtype=np.int16))
        with self._resumable_writes():
            atomic_write_bytes(self.file(PREDICTIONS), buffer.getvalue())

    def read_predictions(self):
        """``(pred, label)`` int arrays of ``predictions.npz``, or None for a run that has none
        (written before multikd saved them)."""
        import numpy as np

        path = self.file(PREDICTIONS)
        if not path.is_file():
            return None
        try:
            with np.load(path) as npz:
                return npz["pred"].astype(np.int64), npz["label"].astype(np.int64)
        except Exception as err:  # noqa: BLE001 - a damaged zip can fail in many ways
            raise TrainingError(
                f"{path} is unreadable ({type(err).__name__}: {err}); delete it (the run's "
                "other results stay valid, only per-image statistics need it)"
            ) from None

    def save_checkpoint(self, state: dict) -> None:
        """Atomically, with the zoo's writer (the file loads with ``load_checkpoint``)."""
        from multikd.models.checkpoint import save_checkpoint

        with self._resumable_writes():
            save_checkpoint(state, self.file(CHECKPOINT))

    def has_checkpoint(self) -> bool:
        return self.file(CHECKPOINT).is_file()

    def has_progress(self) -> bool:
        """Whether any epoch's results were written (checkpoint, metrics or summary)."""
        return any(self.file(name).exists() for name in (CHECKPOINT, METRICS, SUMMARY))

    def load_checkpoint(self, map_location="cpu") -> dict:
        path = self.file(CHECKPOINT)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:
            done = self.finished_epochs()
            advice = (
                f"{METRICS} records {done} finished epoch(s): restore {CHECKPOINT} from a copy "
                f"(a backup, or the folder this run was copied from) and continue with "
                f"{continue_hint(self.path)}; --overwrite would start the run again and "
                f"discard those {done} epoch(s)"
                if done else
                f"{METRICS} records no finished epoch, so starting again with --overwrite "
                "loses nothing"
            )
            raise CheckpointError(
                f"checkpoint {path} is unreadable ({_first_sentence(err)}): it is truncated "
                f"or damaged, so the run cannot continue from it. {advice}"
            ) from None


def teachers_from_runs(run_dirs: list[str]) -> list:
    """One TeacherConfig per finished run directory: its architecture, its checkpoint.pt,
    the directory's name as the teacher's name, and the classes it was trained on
    (``data.classes``; None: every class)."""
    from multikd.train.config import TeacherConfig

    teachers = []
    for path in run_dirs:
        run = RunDir(path)
        if run.state() != "finished":
            raise TrainingError(
                f"--teachers-from {path}: no finished run there (summary.json with status "
                f"finished). Finish it with --resume {path}, or pass --teacher ARCH=CHECKPOINT"
            )
        if not run.has_checkpoint():
            raise CheckpointError(f"--teachers-from {path}: {run.file(CHECKPOINT)} is missing")
        config = run.read_config()
        teachers.append(
            TeacherConfig(
                arch=config.model.arch,
                checkpoint=str(run.file(CHECKPOINT)),
                name=run.path.resolve().name,
                classes=config.data.classes,
            )
        )
    return teachers
