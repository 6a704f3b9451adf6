"""The run's sections as typed dataclasses, each field with its default and one line of
documentation: :class:`RunConfig` and the sections it holds (``data``, ``model``,
``teachers``, ``strategy``, ``loss``, ``optim``, ``runtime``, ``output``, ``plugins``).

The defaults are the field's CIFAR recipe (see DESIGN.md). Values are checked against
these types by :mod:`multikd.train.config.typed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from multikd.method.loss_spec import LossSpec
from multikd.method.loss_spec import documented as _doc
from multikd.train.config.typed import from_mapping

LossConfig = LossSpec
"""The ``loss`` section: :class:`multikd.method.loss_spec.LossSpec`, defined once in the method
layer and handed whole to the distiller (this name stays for code that imports it here)."""

KINDS = ("teacher", "student", "distill")
REFERENCE = "reference"
SMALL_LR_ARCHS = ("mobilenetv2", "shufflev1", "shufflev2")
"""Students trained with lr 0.01 instead of 0.05 by the field's convention (CRD, mdistiller)."""
NO_TEACHER = ("distill needs at least one teacher: pass --teacher ARCH=CHECKPOINT (repeatable) "
              "or --teachers-from RUN_DIR ...")
"""The problem of a distill config without teachers (the CLI leaves it out when a teacher
flag it was given failed: that flag's own error says what is wrong)."""


def _choice(default, choices, doc: str):
    """A field whose value is one of ``choices``: a tuple, or a function returning one,
    called when a value is checked (the loss section's: :func:`multikd.method.loss_spec.choices`)."""
    return field(default=default, metadata={"choices": choices, "doc": doc})


@dataclass
class DataConfig:
    dataset: str = _doc("synthetic", "cifar100, cifar10 or synthetic (no files needed)")
    data_root: Optional[str] = _doc(None, "dataset folder (default: $MULTIKD_DATA, else ./data)")
    val_size: int = _doc(0, "validation images carved from the training set (0: none)")
    synthetic: dict = _doc({}, "options of the synthetic dataset (num_classes, train_size, ...)")
    workers: int = _doc(0, "DataLoader worker processes (per-sample pipeline only)")
    drop_last: bool = _doc(
        False, "skip the last incomplete training batch (CA-MKD's loop does: `continue`)"
    )
    pipeline: str = _doc(
        "batched",
        "batched: whole batches augmented on the training device (fast); per-sample: a torch "
        "DataLoader over the dataset (uses data.workers); both give the same batches bit for bit",
    )
    labeled_fraction: float = _doc(
        1.0, "share of the training images that keep their label (a fixed, seeded, "
        "class-balanced subset; 0: no label is read); the rest is an unlabelled transfer set"
    )
    classes: Optional[list[int]] = _doc(
        None, "train and test on these classes only, relabelled 0..m-1 in this order (a "
        "partial teacher, e.g. 0-49; CLI --classes 0-49,60); null: every class"
    )
    unlabeled_dir: str = _doc(
        "", "folder of extra unlabelled images (png/jpg/bmp, any size: resized to 32x32) added "
        "to the transfer set"
    )


@dataclass
class ModelConfig:
    """The model being trained: the student of ``distill``, the model of ``train-teacher``."""

    arch: str = _doc("resnet8x4", "zoo architecture or timm:<name>")
    checkpoint: Optional[str] = _doc(None, "initial weights (a checkpoint with key 'model')")


@dataclass
class TeacherConfig:
    arch: str = _doc("resnet32x4", "zoo architecture or timm:<name>")
    checkpoint: Optional[str] = _doc(None, "trained weights (e.g. RUN_DIR/checkpoint.pt)")
    name: Optional[str] = _doc(None, "label in logs and tables (default: the architecture)")
    self_from_epoch: Optional[int] = _doc(
        None, "self-distillation: this teacher is a frozen snapshot of the running student "
        "taken at the start of epoch E (>= 2, < optim.epochs); before E it is left out "
        "(arch and checkpoint are then not used; CLI: --teacher self@E)"
    )
    classes: Optional[list[int]] = _doc(
        None, "the student classes this teacher predicts, in the order of its outputs (a "
        "teacher trained with train-teacher --classes); null: read from its run's config.yaml "
        "beside the checkpoint, else every class"
    )


@dataclass
class StrategyConfig:
    name: str = _doc("ce-filter", "teacher selection/weighting strategy")
    params: dict = _doc({}, "keyword parameters of the strategy")


@dataclass
class OptimConfig:
    lr: Optional[float] = _doc(
        None, "learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleNet students)"
    )
    momentum: float = _doc(0.9, "SGD momentum")
    weight_decay: float = _doc(5e-4, "SGD weight decay")
    nesterov: bool = _doc(False, "Nesterov momentum")
    batch_size: int = _doc(64, "global batch size (split across processes under torchrun)")
    epochs: int = _doc(240, "training epochs")
    schedule: str = _choice("multistep", ("multistep", "cosine"), "learning-rate schedule")
    milestones: Optional[list[int]] = _doc(
        None, "multistep epochs (default 62.5/75/87.5% of epochs: 150,180,210 of 240)"
    )
    lr_decay: float = _doc(0.1, "multistep factor applied at each milestone")
    warmup_epochs: int = _doc(0, "linear warmup from 0 over this many epochs (per step)")


@dataclass
class RuntimeConfig:
    device: str = _doc("auto", "auto (cuda when available), cpu, cuda, cuda:N")
    amp: bool = _doc(False, "mixed precision: bf16 autocast on CPU, fp16 + GradScaler on CUDA")
    channels_last: bool = _doc(False, "channels_last memory format")
    compile: bool = _doc(False, "torch.compile the models")
    seed: int = _doc(0, "seed of initialization, data order and augmentation")
    deterministic: bool = _doc(False, "deterministic algorithms (slower on CUDA)")
    teacher_cache: str = _doc(
        "", "directory of the teacher-logit cache for logit-only distillation ('': off)"
    )
    teacher_cache_dtype: str = _choice(
        "float16", ("float16", "float32"), "teacher-cache storage (float32: bit-exact logits)"
    )
    teacher_cache_budget: int = _doc(
        4 * 2**30, "bytes the teacher cache may hold on disk (0: unlimited)"
    )


@dataclass
class OutputConfig:
    run_dir: Optional[str] = _doc(
        None, "run directory (default runs/<kind>_<arch>[_<strategy>]_s<seed>)"
    )
    quiet: bool = _doc(False, "no progress bar, warnings only")
    log_interval: int = _doc(50, "steps between progress-bar updates (each costs one host sync)")
    label: Optional[str] = _doc(
        None, "the run's column label in tables (suites set the strategy entry's label)"
    )
    tensorboard: bool = _doc(
        False, "log every epoch's metrics to RUN_DIR/tensorboard (needs the tensorboard package)"
    )
    wandb_project: Optional[str] = _doc(
        None, "log every epoch's metrics to this Weights & Biases project (needs wandb)"
    )


@dataclass
class PluginConfig:
    """A plugin file the run used (:mod:`multikd.plugins`): its absolute path and the
    SHA-256 of its bytes when the run was made."""

    path: str = _doc("", "absolute path of the plugin file")
    sha256: str = _doc("", "SHA-256 of the file's bytes, in hex")


@dataclass
class RunConfig:
    kind: str = _choice("teacher", KINDS, "teacher or student (train-teacher), distill")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    plugins: list[PluginConfig] = field(default_factory=list)
    """The plugin files in effect (``--plugin``, ``MULTIKD_PLUGINS``, a suite's ``plugins:``)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "RunConfig":
        """The config of ``data``, after loading the plugins it records (their strategies
        and losses are names its values may use)."""
        if isinstance(data, dict) and isinstance(data.get("plugins"), list):
            from multikd.plugins import ensure_loaded

            ensure_loaded(data["plugins"])
        return from_mapping(cls, data, where)
