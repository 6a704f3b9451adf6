"""``multikd teachers download``: the published CIFAR-100 teachers in a ``--teachers-dir``.

:func:`download_teachers` fetches a release archive (mdistiller's ``cifar_teachers.tar``,
see :mod:`multikd.models.published`) with :func:`multikd.data.download.fetch` (streamed,
resumable), extracts it into a temporary folder, loads every teacher's checkpoint strictly
into its zoo architecture, and only then moves each ``<arch>_vanilla/`` folder into the
output folder. That folder is what the suites' ``published:`` entries name under
``multikd bench --teachers-dir``, and what mdistiller (``download_ckpts/cifar_teachers/``)
and RepDistiller (``save/models/``) read. The release publishes no checksum, so the
archive's sha256 (and each file's) is recorded in :data:`MANIFEST` instead, and the files
are checked by loading them.

:func:`check_teachers` re-checks a folder: each file against its architecture, and, when
CIFAR-100 is under the data root, its test accuracy against the published one (compared
only when the files are the official release: on anything else the number means nothing).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from multikd.atomic import atomic_write_text
from multikd.data.cifar import cifar_layout, resolve_data_root, verify_checksums
from multikd.data.download import digests, extract_tar, fetch, place, staging
from multikd.errors import CheckpointError, DownloadError
from multikd.models.published import PublishedTeacher, check_teacher_file, teacher_release

log = logging.getLogger(__name__)

MANIFEST = "teachers-manifest.json"
# allowed gap (accuracy points) between measured and published, as a suite's acc_tolerance
ACC_TOLERANCE = 1.0


def download_teachers(
    out: str | os.PathLike,
    source: str = "mdistiller",
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
) -> Path:
    """Download ``source``'s teachers into ``out`` (``out/<arch>_vanilla/ckpt_epoch_240.pth``)
    and write ``out/teachers-manifest.json``; returns ``out``.

    When every teacher is already there, nothing is downloaded. Teachers already there are
    replaced only with ``force``. Nothing is put into ``out`` unless every teacher of the
    release is in the archive and fits its architecture.
    """
    release = teacher_release(source)
    out = Path(out)
    present = [t for t in release.teachers if (out / t.file).exists()]
    if present and not force:
        if len(present) == len(release.teachers):
            log.info("%s already holds the %s teachers; nothing downloaded (--force downloads "
                     "them again)", out, source)
            return out
        raise DownloadError(
            f"{out} already holds {', '.join(t.file for t in present)}; pass --force to "
            "replace them with the download, or give another --out"
        )
    url = url or release.url
    got = fetch(url, out / release.archive, progress=progress, retries=retries,
                retry_wait_s=retry_wait_s)
    by_tail = {PurePosixPath(t.file): t for t in release.teachers}

    def target(name: PurePosixPath) -> PurePosixPath | None:
        tail = PurePosixPath(*name.parts[-2:]) if len(name.parts) >= 2 else name
        return tail if tail in by_tail else None

    files = {}
    with staging(out) as tmp:
        try:
            found = extract_tar(got.path, tmp, target)
            missing = [t.file for t in release.teachers if PurePosixPath(t.file) not in found]
            if missing:
                raise DownloadError(
                    f"{url} holds no {', '.join(missing)}: it is not {source}'s teacher "
                    f"archive. Nothing was put into {out}"
                )
            for teacher in release.teachers:
                path = tmp / teacher.file
                try:
                    params = check_teacher_file(teacher, path)
                except CheckpointError as err:
                    raise CheckpointError(
                        f"{url} holds a {teacher.file} that does not fit {teacher.arch}, so "
                        f"nothing was put into {out}:\n{err}"
                    ) from None
                files[teacher.arch] = {"file": teacher.file, "sha256": digests(path).sha256,
                                       "params": params}
        except (DownloadError, CheckpointError):
            got.path.unlink()  # unusable; a full disk (StorageError) keeps it for a re-run
            raise
        for teacher in release.teachers:
            place(tmp / teacher.folder, out / teacher.folder, replace=force)
    manifest = {
        "source": source,
        "url": url,
        "archive": release.archive,
        "bytes": got.size,
        "sha256": got.sha256,
        "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "teachers": files,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    got.path.unlink()
    log.info("%s: %d teachers from %s (sha256 %s)", out, len(files), url, got.sha256)
    return out


@dataclass
class TeacherCheck:
    """One teacher file: it fits its architecture (``params``); its measured test accuracy
    (None: not measured)."""

    teacher: PublishedTeacher
    path: Path
    params: int
    test_acc: float | None = None

    def differs(self, tolerance: float) -> bool:
        return self.test_acc is not None and abs(self.test_acc - self.teacher.test_acc) > tolerance


@dataclass
class TeacherReport:
    """Every teacher of a folder checked; ``compared``: whether the accuracies were measured
    on the official CIFAR-100 (and so compared with the published ones); ``note`` says why
    not."""

    folder: Path
    rows: list[TeacherCheck] = field(default_factory=list)
    compared: bool = False
    note: str = ""
    tolerance: float = ACC_TOLERANCE

    @property
    def all_ok(self) -> bool:
        return not (self.compared and any(r.differs(self.tolerance) for r in self.rows))

    def text(self) -> str:
        lines = [f"teachers in {self.folder}:"]
        for r in self.rows:
            t = r.teacher
            line = f"  {t.file:<34} fits {t.arch:<10} {r.params:>11,} params"
            if r.test_acc is not None:
                line += f"  test {r.test_acc:6.2f}%"
                if self.compared:
                    status = "DIFFERS" if r.differs(self.tolerance) else "ok"
                    line += (f" (published {t.test_acc:.2f}%, "
                             f"{r.test_acc - t.test_acc:+.2f}) {status}")
            lines.append(line)
        if self.note:
            lines.append(self.note)
        elif self.compared:
            lines.append(
                f"every teacher within {self.tolerance} points of its published accuracy"
                if self.all_ok else
                f"some teachers differ from their published accuracy by more than "
                f"{self.tolerance} points: the files or the data are not the published ones"
            )
        return "\n".join(lines)


def check_teachers(
    out: str | os.PathLike,
    source: str = "mdistiller",
    data_root: str | os.PathLike | None = None,
    evaluate: bool = True,
    device: str = "auto",
    tolerance: float = ACC_TOLERANCE,
) -> TeacherReport:
    """Load each of ``source``'s teachers in ``out`` into its architecture (a misfit raises
    :class:`CheckpointError`) and, with ``evaluate`` and CIFAR-100 under ``data_root``,
    measure its test accuracy."""
    from multikd.train.engine import evaluate_checkpoint

    release = teacher_release(source)
    out = Path(out)
    report = TeacherReport(out, tolerance=tolerance)
    for teacher in release.teachers:
        path = out / teacher.file
        if not path.is_file():
            raise CheckpointError(
                f"{out} lacks {teacher.file}; get the teachers with `multikd teachers download "
                f"--out {out}`"
            )
        report.rows.append(TeacherCheck(teacher, path, check_teacher_file(teacher, path)))
    lay = cifar_layout("cifar100")
    folder = resolve_data_root(data_root) / lay.folder
    if not evaluate:
        report.note = "test accuracy not measured (--no-eval)"
        return report
    if not all((folder / f).is_file() for f in lay.files):
        report.note = (
            f"test accuracy not measured: no CIFAR-100 in {folder} (get it with `multikd data "
            "download --dataset cifar100`, or pass --data-root)"
        )
        return report
    report.compared = verify_checksums("cifar100", data_root).all_match
    if not report.compared:
        report.note = (
            f"the CIFAR-100 files in {folder} are not the official release (`multikd data "
            "verify`), so the accuracies are not compared with the published ones"
        )
    for row in report.rows:
        result = evaluate_checkpoint(row.teacher.arch, str(row.path), "cifar100",
                                     data_root=str(data_root) if data_root else None,
                                     device=device)
        row.test_acc = float(result["test_acc"])
        log.info("%s: %.2f%% test accuracy", row.teacher.file, row.test_acc)
    return report
