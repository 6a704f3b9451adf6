"""The CIFAR-100 teachers the KD literature publishes: where they lie, what they score.

RepDistiller (Tian et al., ICLR 2020, github.com/HobbitLong/RepDistiller) trained six
CIFAR-100 teachers; mdistiller (megvii-research/mdistiller) republishes them as one release
asset, ``cifar_teachers.tar``, under the release tag ``checkpoints`` (its README, "2.
Training on CIFAR-100": "Download the `cifar_teachers.tar` at
https://github.com/megvii-research/mdistiller/releases/tag/checkpoints and untar it to
`./download_ckpts`"). Both codebases read a teacher from ``<name>_vanilla/ckpt_epoch_240.pth``
under one folder, with its weights under the key ``model``:

- mdistiller ``mdistiller/models/cifar/__init__.py``: ``cifar100_model_prefix =
  ".../download_ckpts/cifar_teachers/"`` and ``cifar_model_dict["resnet32x4"] =
  (resnet32x4, cifar100_model_prefix + "resnet32x4_vanilla/ckpt_epoch_240.pth")``, likewise
  for resnet56, resnet110, ResNet50, wrn_40_2 and vgg13 (``vgg13_bn``);
- RepDistiller ``scripts/fetch_pretrained_teachers.sh`` puts the same six files into
  ``save/models/<name>_vanilla/ckpt_epoch_240.pth``, and ``train_student.py``'s
  ``load_teacher`` reads ``torch.load(path)['model']``, taking the architecture from the
  folder name.

So a folder laid out as :attr:`PublishedTeacher.file` says is at once mdistiller's
``download_ckpts/cifar_teachers/``, RepDistiller's ``save/models/`` and what a suite's
``published:`` entries name under ``multikd bench --teachers-dir``.

Published test accuracies (top-1 %, CIFAR-100 test set): RepDistiller's README, the
"Teacher" rows of its two benchmark tables (teacher and student of the same, and of
different, architectural type): wrn_40_2 75.61, resnet56 72.34, resnet110 74.31,
resnet32x4 79.42, vgg13 74.64, ResNet50 79.34.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multikd.errors import CheckpointError

MDISTILLER_TEACHERS_URL = (
    "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
    "cifar_teachers.tar"
)
CHECKPOINT_NAME = "ckpt_epoch_240.pth"


@dataclass(frozen=True)
class PublishedTeacher:
    """One published teacher: its zoo architecture and its published test accuracy (%)."""

    arch: str
    test_acc: float

    @property
    def folder(self) -> str:
        return f"{self.arch}_vanilla"

    @property
    def file(self) -> str:
        """Its path under a teachers folder, as RepDistiller and mdistiller read it."""
        return f"{self.folder}/{CHECKPOINT_NAME}"


PUBLISHED_TEACHERS = (
    PublishedTeacher("resnet56", 72.34),
    PublishedTeacher("resnet110", 74.31),
    PublishedTeacher("resnet32x4", 79.42),
    PublishedTeacher("ResNet50", 79.34),
    PublishedTeacher("wrn_40_2", 75.61),
    PublishedTeacher("vgg13", 74.64),
)


@dataclass(frozen=True)
class TeacherRelease:
    """Where a set of published teachers is downloaded from, as one archive."""

    name: str
    url: str
    archive: str
    teachers: tuple[PublishedTeacher, ...]


TEACHER_RELEASES = {
    "mdistiller": TeacherRelease(
        "mdistiller", MDISTILLER_TEACHERS_URL, "cifar_teachers.tar", PUBLISHED_TEACHERS
    ),
}


def teacher_release(name: str) -> TeacherRelease:
    if name not in TEACHER_RELEASES:
        raise CheckpointError(
            f"unknown teacher source {name!r}; known: {', '.join(TEACHER_RELEASES)}"
        )
    return TEACHER_RELEASES[name]


def check_teacher_file(teacher: PublishedTeacher, path: str | Path) -> int:
    """Load ``path`` strictly into ``teacher.arch`` (100 classes), as ``multikd models
    check`` does; return its parameter count. Raises :class:`CheckpointError` when it does
    not fit."""
    from multikd.models import create_model

    model = create_model(teacher.arch, num_classes=100, checkpoint=path)
    return sum(p.numel() for p in model.parameters())
