"""``multikd reproduce NAME``: one command per paper.

NAME is a shipped suite that carries published ``targets:`` (``experiments/cifar100/``), or
the path of any suite file that does. The command

1. finds what the suite needs and lacks: the dataset under ``--data-root`` and the published
   teacher checkpoints its ``published:`` teachers name (under ``--teachers-dir``, default
   ``OUT/published-teachers``); with ``--download`` it fetches them through the same
   checksummed, resumable downloads as ``multikd data download`` and ``multikd teachers
   download``, and without it stops and says what is missing;
2. runs the suite (``multikd bench``: resumable, teachers verified before use);
3. writes ``OUT/published.md``: the best-epoch table (the metric the papers' scripts print)
   with the published column (:mod:`multikd.results.targets`).

``--dry-run`` does none of that: it prints the plan, what would be downloaded, and an
estimate of the device-hours, from the images per second a short probe measures on this
machine for every (student, teachers) pair of the plan (:func:`probe`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from multikd.bench.suite import Plan, Suite, load_suite
from multikd.errors import ConfigError, MultikdError

log = logging.getLogger(__name__)

SUITES_DIR = Path(__file__).resolve().parents[2] / "experiments" / "cifar100"
TEACHERS_FOLDER = "published-teachers"
TABLE_FILE = "published.md"
CIFAR = ("cifar100", "cifar10")


def reproducible() -> dict[str, Path]:
    """Name -> file of each shipped suite that carries published targets."""
    if not SUITES_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.yaml")) if load_suite(p).targets}


def suite_path(name: str) -> Path:
    """The suite file of ``name``: a shipped suite with targets, or a suite file path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        if not load_suite(path).targets:
            raise ConfigError(f"{path} has no 'targets:' section: nothing to reproduce; run it "
                              "with `multikd bench` instead")
        return path
    known = reproducible()
    if name not in known:
        raise ConfigError(f"no suite {name!r} to reproduce; the suites with published targets "
                          f"are: {', '.join(known) or 'none'} (or give a suite file with "
                          "'targets:')")
    return known[name]


@dataclass
class Missing:
    """What the suite needs and the machine lacks."""

    dataset: str | None = None
    """The CIFAR variant absent from the data root (None: present, or not a CIFAR suite)."""
    teachers: list[str] = field(default_factory=list)
    """Published checkpoint files (relative to the teachers folder) that are not there."""

    def __bool__(self) -> bool:
        return bool(self.dataset or self.teachers)


def published_teachers(suite: Suite) -> list[str]:
    """The ``published:`` files of the teachers the suite's pairs use."""
    used = {t for name, _ in suite.pairs for t in suite.teacher_sets[name]}
    return [s.published for t, s in suite.teachers.items() if t in used and s.published]


def missing(suite: Suite, data_root: str | Path | None, teachers_dir: Path) -> Missing:
    from multikd.data.cifar import cifar_layout, resolve_data_root

    found = Missing()
    dataset = suite.data.get("dataset", "synthetic")
    if dataset in CIFAR:
        layout = cifar_layout(dataset)
        folder = resolve_data_root(data_root) / layout.folder
        if not all((folder / f).is_file() for f in layout.files):
            found.dataset = dataset
    found.teachers = [f for f in published_teachers(suite) if not (teachers_dir / f).is_file()]
    return found


def download(suite: Suite, need: Missing, data_root, teachers_dir: Path, data_url=None,
             data_md5=None, teachers_url=None, progress: bool = True) -> None:
    """Fetch what ``need`` lists (the explicit downloads of ``data`` and ``teachers``)."""
    if need.dataset:
        from multikd.data.download import download_cifar

        download_cifar(need.dataset, data_root=data_root, url=data_url, md5=data_md5,
                       progress=progress)
    if need.teachers:
        from multikd.bench.published import download_teachers

        download_teachers(teachers_dir, url=teachers_url, progress=progress)
        still = [f for f in need.teachers if not (teachers_dir / f).is_file()]
        if still:
            raise MultikdError(f"the published teachers' archive holds no {', '.join(still)}; "
                               f"put them under {teachers_dir} yourself (--teachers-dir)")


def describe_downloads(need: Missing, data_root, teachers_dir: Path) -> str:
    from multikd.data.cifar import cifar_layout, resolve_data_root
    from multikd.models.published import teacher_release

    if not need:
        return "downloads: none (the dataset and the published teachers are in place)"
    lines = ["downloads (with --download):"]
    if need.dataset:
        lay = cifar_layout(need.dataset)
        lines.append(f"  {need.dataset}: {lay.url} -> {resolve_data_root(data_root)}/{lay.folder}")
    if need.teachers:
        release = teacher_release("mdistiller")
        lines.append(f"  published teachers: {release.url} -> {teachers_dir} "
                     f"(for {', '.join(need.teachers)})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the estimate
@dataclass
class Rate:
    """Measured training throughput of one (student, teachers) pair."""

    student: str
    teachers: tuple[str, ...]
    images_per_s: float


def _train_images(config) -> int:
    from multikd.data.synthetic import SYNTHETIC_DEFAULTS

    if config.data.dataset in CIFAR:
        total = 50000
    else:
        total = {**SYNTHETIC_DEFAULTS, **(config.data.synthetic or {})}["train_size"]
    return max(1, total - int(config.data.val_size or 0))


def _jobs(plan: Plan) -> list[tuple[str, tuple[str, ...], object]]:
    """(trained arch, teacher archs, config) of every training job of the plan; a teacher
    with a ``published:`` file is downloaded, not trained."""
    jobs = [(j.spec.arch, (), j.config) for j in plan.teachers.values()
            if not (j.published or j.spec.published)]
    for run in plan.runs:
        teachers = tuple(t.arch for t in run.config.teachers if t.arch != "self")
        jobs.append((run.student, teachers, run.config))
    return jobs


def probe(student: str, teachers: tuple[str, ...], num_classes: int, batch_size: int,
          steps: int, device: torch.device) -> float:
    """Images per second of ``steps`` plain distillation steps (after one warm-up step):
    the student's forward, backward and SGD step, each teacher's forward without autograd,
    on random 32x32 images. Learned strategies' own updates and adapters are not counted."""
    from multikd.models import create_model

    torch.manual_seed(0)
    model = create_model(student, num_classes=num_classes).to(device).train()
    frozen = [create_model(t, num_classes=num_classes).to(device).eval() for t in teachers]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)

    def step():
        with torch.no_grad():
            soft = [t(x).div(4.0).softmax(-1) for t in frozen]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        for p in soft:
            loss = loss + F.kl_div(logits.div(4.0).log_softmax(-1), p, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


@dataclass
class Estimate:
    rates: list[Rate]
    hours: float
    device: str
    jobs: int

    def text(self) -> str:
        lines = [f"estimate: {self.hours:.1f} device-hours on {self.device} for {self.jobs} "
                 "training jobs (probe images/s of each student with its teachers below; "
                 "epochs x training images / images/s, summed; the shared teacher pass of "
                 "lockstep groups and learned strategies' own updates are not counted)"]
        lines += [f"  {r.student} <- {'+'.join(r.teachers) or '(alone)'}: "
                  f"{r.images_per_s:,.0f} images/s" for r in self.rates]
        return "\n".join(lines)


def estimate(plan: Plan, steps: int = 3, device: str = "auto") -> Estimate:
    """Device-hours of every training job of ``plan`` from :func:`probe` rates."""
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else "cpu" if device == "auto" else device)
    rates: dict[tuple, Rate] = {}
    seconds = 0.0
    jobs = _jobs(plan)
    for arch, teachers, config in jobs:
        key = (arch, teachers, config.optim.batch_size)
        if key not in rates:
            classes = 100 if config.data.dataset == "cifar100" else (
                10 if config.data.dataset == "cifar10" else
                (config.data.synthetic or {}).get("num_classes", 100))
            rates[key] = Rate(arch, teachers, probe(arch, teachers, classes,
                                                    config.optim.batch_size, steps, dev))
        seconds += config.optim.epochs * _train_images(config) / rates[key].images_per_s
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Estimate(list(rates.values()), seconds / 3600, name, len(jobs))
