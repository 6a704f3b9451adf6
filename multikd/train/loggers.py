"""Live logging of each epoch's row to TensorBoard and/or Weights & Biases (both optional).

``output.tensorboard: true`` writes event files under ``RUN_DIR/tensorboard`` with
``torch.utils.tensorboard`` (needs the ``tensorboard`` package: ``pip install
'multikd[logging]'``); ``output.wandb_project: NAME`` logs to that W&B project (needs
``wandb`` and a login; the run is named after the run directory). Neither is imported
unless asked for, and neither is required by the install.

Every numeric column of the epoch's ``metrics.csv`` row is logged at step = epoch, under a
tag that groups it: ``loss/<part>``, ``acc/<split>`` (train, val, test), ``test/loss``,
``teacher_weight/<name>``, ``teacher_ce/<name>``, ``teacher_kept/<name>``, ``lr``,
``speed/images_per_s``, ``speed/epoch_time_s``; anything else under ``other/``. Only rank 0
logs. A resumed run appends to the same event folder; TensorBoard shows the re-run epochs
of an interrupted run as the later values at that step.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from multikd.errors import ConfigError

log = logging.getLogger(__name__)

_PREFIXES = (
    ("loss_", "loss/"),
    ("w_", "teacher_weight/"),
    ("ce_", "teacher_ce/"),
    ("kept_", "teacher_kept/"),
)
_NAMES = {
    "lr": "lr",
    "train_acc": "acc/train",
    "val_acc": "acc/val",
    "test_acc": "acc/test",
    "val_loss": "val/loss",
    "test_loss": "test/loss",
    "images_per_s": "speed/images_per_s",
    "epoch_time_s": "speed/epoch_time_s",
}


def scalar_tags(row: dict) -> dict[str, float]:
    """The epoch row's numeric columns (``epoch`` excluded) under their tags (module doc)."""
    out = {}
    for key, value in row.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(float(value)):
            continue
        tag = _NAMES.get(key)
        if tag is None:
            tag = next((new + key[len(old):] for old, new in _PREFIXES if key.startswith(old)),
                       "other/" + key)
        out[tag] = float(value)
    return out


class EpochLoggers:
    """The loggers a run's ``output`` section asks for; :meth:`log` after each epoch,
    :meth:`close` at the end. With neither option set it does nothing."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False,
                 wandb_project: str | None = None, config: dict | None = None):
        self._writers = []
        self._wandb = None
        run_dir = Path(run_dir)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "output.tensorboard needs the tensorboard package: pip install "
                    "'multikd[logging]' (or pip install tensorboard), or set "
                    "output.tensorboard false"
                ) from None
            self._writers.append(SummaryWriter(log_dir=str(run_dir / "tensorboard")))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "output.wandb_project needs the wandb package: pip install wandb (and "
                    "wandb login), or leave output.wandb_project empty"
                ) from None
            self._wandb = wandb.init(project=wandb_project, name=run_dir.name,
                                     dir=str(run_dir), config=config or {}, resume="allow",
                                     id=_wandb_id(run_dir))

    @property
    def active(self) -> bool:
        return bool(self._writers) or self._wandb is not None

    def log(self, row: dict) -> None:
        tags = scalar_tags(row)
        step = int(row["epoch"])
        for writer in self._writers:
            for tag, value in tags.items():
                writer.add_scalar(tag, value, step)
            writer.flush()
        if self._wandb is not None:
            self._wandb.log({**tags, "epoch": step}, step=step)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()
        self._writers = []
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_id(run_dir: Path) -> str:
    """A stable W&B run id per run directory, so a resumed run continues its W&B run."""
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
