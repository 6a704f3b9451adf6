"""The hot path waits for nothing: the host-sync detector itself, then the engine's training
step for every strategy, with features, under AMP + channels_last and for plain training,
which reads the device only on log steps (one read, the meter's)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from multikd.train import distributed as ddp
from multikd.train import engine
from multikd.train.build import build_data
from multikd.train.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    RunConfig,
    RuntimeConfig,
    StrategyConfig,
    TeacherConfig,
    resolve,
)
from multikd.errors import TrainingError
from multikd.train.hostsync import HostSyncDetector
from multikd.train.meters import EpochMeter
from multikd.models import create_model
from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY
from multikd.method.strategies import list_strategies

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 32, "test_size": 8, "seed": 0}
LOG_INTERVAL = 3  # 4 steps of 8: step 0 warms up, 1 and 3 are plain steps, 2 is a log step
PARAMS = {"fixed": {"weights": [0.6, 0.4]}}
# a fixed average, per-sample CE screening, CA-MKD's weights and a learned agent; the maps of
# a stage, a variational loss and CRD's sampled memory
FAST_STRATEGIES = {"uniform", "ce-filter", "ca-mkd", "mtkd-rl"}
FAST_FEATURE_LOSSES = {"at", "vid", "crd"}


# --------------------------------------------------------------------------- the detector
def _syncs(fn, include_cpu=True) -> list[str]:
    with HostSyncDetector(include_cpu=include_cpu) as watch:
        fn()
    return [s.op for s in watch.syncs]


@pytest.mark.parametrize("name, fn, op", [
    ("item", lambda t, m, i: t.sum().item(), "aten._local_scalar_dense.default"),
    ("float", lambda t, m, i: float(t[0]), "aten._local_scalar_dense.default"),
    ("if", lambda t, m, i: 1 if m.any() else 0, "aten._local_scalar_dense.default"),
    ("tolist", lambda t, m, i: t.tolist(), "Tensor.tolist"),
    ("numpy", lambda t, m, i: t.numpy(), "Tensor.numpy"),
    ("equal", lambda t, m, i: torch.equal(t, t), "aten.equal.default"),
    ("nonzero", lambda t, m, i: torch.where(m), "aten.nonzero.default"),
    ("mask read", lambda t, m, i: t[m], "aten.index.Tensor"),
    ("mask write", lambda t, m, i: t.__setitem__(m, 0.0), "aten.index_put_.default"),
    ("unique", lambda t, m, i: torch.unique(i), "aten._unique2.default"),
    ("repeat_interleave", lambda t, m, i: torch.repeat_interleave(i),
     "aten.repeat_interleave.Tensor"),
    ("one_hot on the CPU", lambda t, m, i: F.one_hot(i, 4), "aten._local_scalar_dense.default"),
])
def test_detector_flags_each_kind_of_host_read(name, fn, op):
    t, i = torch.randn(6), torch.tensor([0, 2, 1, 3])
    found = _syncs(lambda: fn(t, t > 0, i))
    assert found and set(found) == {op}, (name, found)
    assert _syncs(lambda: fn(t, t > 0, i), include_cpu=False) == []  # all of them on the CPU


def test_detector_passes_sync_free_code_and_sees_the_backward_pass():
    w = torch.randn(4, 3, requires_grad=True)
    i = torch.tensor([0, 2, 1, 3])
    with HostSyncDetector(include_cpu=True) as watch:
        loss = (w.sin()[i] * 2).sum()
        before = watch.total_ops
        loss.backward()
        torch.repeat_interleave(torch.arange(4), i, output_size=6)
    assert watch.syncs == [] and watch.report().startswith("no host-device syncs")
    assert watch.total_ops - before >= 4  # the backward's ops: cos, mul, index_put, ...
    assert watch.ops["cos"] == 1 and w.grad is not None
    watch.reset()
    assert watch.total_ops == 0


def test_detector_names_the_calling_line():
    t = torch.ones(2)
    with HostSyncDetector(include_cpu=True) as watch:
        t.sum().item()
    (event,) = watch.syncs
    assert event.where.endswith(f"in {test_detector_names_the_calling_line.__name__}")
    assert "test_hot_path.py:" in event.where and event.device == "cpu"
    assert "aten._local_scalar_dense.default on cpu" in watch.report()


def test_on_a_device_only_device_reads_and_blocking_copies_count():
    """Fake CUDA tensors (no GPU needed): what a GPU run's default detector reports."""
    with FakeTensorMode():
        gpu, cpu = torch.empty(4, device="cuda"), torch.empty(4)
        with HostSyncDetector() as watch:
            gpu.to("cpu")                       # sync
            cpu.to("cuda")                      # sync (blocking host-to-device copy)
            cpu.to("cuda", non_blocking=True)   # no sync
            gpu.copy_(cpu)                      # sync
            gpu.copy_(cpu, non_blocking=True)   # no sync
            (gpu * 2 + cpu.sum().to("cuda", non_blocking=True)).exp()
            for read in (lambda: gpu.sum().item(), lambda: cpu.sum().item()):
                with pytest.raises(DataDependentOutputException):  # fakes hold no values
                    read()
    assert [(s.op, s.device) for s in watch.syncs] == [
        ("aten._to_copy.default", "cuda:0"),
        ("aten._to_copy.default", "cuda:0"),
        ("aten.copy_.default", "cuda:0"),
        ("aten._local_scalar_dense.default", "cuda:0"),  # the CPU .item() is not a sync
    ]


# --------------------------------------------------------------------------- the meter
def _meter_batches():
    g = torch.Generator().manual_seed(0)
    for step, n in enumerate((8, 8, 5)):
        logits, y = torch.randn(n, 10, generator=g), torch.randint(10, (n,), generator=g)
        losses = {k: torch.rand((), generator=g) * 3 for k in ("ce", "kd", "total")}
        info = {"weights": torch.rand(2, generator=g), "ce": torch.rand(2, generator=g)}
        yield step, logits, y, losses, info


def test_meter_sums_are_the_float64_image_weighted_sums():
    meter = EpochMeter(torch.device("cpu"), ddp.detect(), 1, "run")
    count, correct, sums = 0, 0, {}
    for step, logits, y, losses, info in _meter_batches():
        meter.add(step, logits, y, losses, info)
        n = y.numel()
        count, correct = count + n, correct + int((logits.argmax(1) == y).sum())
        for k, v in [*losses.items(), *((f"{k}{j}", v[j]) for k, v in info.items()
                                         for j in range(2))]:
            sums[k] = sums.get(k, 0.0) + float(v.double() * n)
    got = meter.finish(["a", "b"])
    assert got["train_acc"] == 100.0 * correct / count
    assert got["loss_kd"] == sums["kd"] / count and got["loss_total"] == sums["total"] / count
    assert got["w_b"] == sums["weights1"] / count and got["ce_a"] == sums["ce0"] / count


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_meter_names_the_first_step_whose_loss_was_not_finite(bad):
    meter = EpochMeter(torch.device("cpu"), ddp.detect(), 3, "run")
    for step, logits, y, losses, info in _meter_batches():
        if step >= 1:
            losses["total"] = losses["total"] * bad
        meter.add(step, logits, y, losses, info)
    with pytest.raises(TrainingError, match="at epoch 3, step 2; training stopped"):
        meter.check()


# --------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Checkpoints of two random resnet8 teachers, and data splits shared by every run."""
    root = tmp_path_factory.mktemp("hot_path")
    checkpoints = _random_teachers(root, "teacher", outputs=10, seed=100)
    splits = build_data(_config(root, checkpoints, "run"), seed=0)
    return root, checkpoints, splits


def _random_teachers(root, prefix: str, outputs: int, seed: int) -> list[str]:
    """Checkpoint files of two randomly initialised resnet8 with ``outputs`` logits."""
    paths = []
    for k in range(2):
        torch.manual_seed(seed + k)
        path = root / f"{prefix}{k}.pt"
        torch.save({"model": create_model("resnet8", num_classes=outputs).state_dict()}, path)
        paths.append(str(path))
    return paths


def _config(root, checkpoints, name, kind="distill", strategy="uniform", gamma=0.0,
            amp=False, classes=None, merge="restricted", feature_loss="mse",
            feature_params=None) -> RunConfig:
    teachers = [TeacherConfig(arch="resnet8", checkpoint=c, name=f"t{k}",
                              classes=None if classes is None else classes[k])
                for k, c in enumerate(checkpoints)] if kind == "distill" else []
    return resolve(RunConfig(
        kind=kind,
        data=DataConfig(dataset="synthetic", synthetic=dict(SYNTH)),
        model=ModelConfig(arch="resnet8"),
        teachers=teachers,
        strategy=StrategyConfig(name=strategy, params=PARAMS.get(strategy, {})),
        loss=LossConfig(gamma=gamma, label_merge=merge, feature_loss=feature_loss,
                        feature_params=dict(feature_params or {})),
        optim=OptimConfig(batch_size=8, epochs=1),
        runtime=RuntimeConfig(device="cpu", seed=0, amp=amp, channels_last=amp),
        output=OutputConfig(run_dir=str(root / "runs" / name), quiet=True,
                            log_interval=LOG_INTERVAL),
    ))


def _epoch_syncs(setup, name, **kw) -> dict[int, list]:
    """One epoch of a fresh run, each step under the detector: ``{step: syncs}``."""
    root, checkpoints, splits = setup
    run = engine.prepare_run(_config(root, checkpoints, name, **kw), splits=splits,
                             teacher_acc={})
    learner = run.parts.module
    if hasattr(learner, "check_every_cpu_batch"):
        learner.check_every_cpu_batch = False  # the first batch is still checked
    run.splits.train.set_epoch(1)
    run.train_loader.sampler.set_epoch(1)
    run.begin_epoch(1)
    found = {}
    for step, batch in enumerate(run.train_loader):
        x, y = engine.to_device(batch[0], batch[1], run.device, run.cfg.runtime.channels_last)
        index = run.batch_index(batch)  # CRD's memory bank reads the samples' indices
        with HostSyncDetector(include_cpu=True) as watch:
            running = run.train_step(step, x, y, index=index)
        found[step] = watch.syncs
        assert (running is not None) == (step == LOG_INTERVAL - 1)
    assert len(found) == 4
    return found


def _assert_hot_path(found: dict[int, list]) -> None:
    log_step = LOG_INTERVAL - 1
    unexpected = [f"step {step}: {s.op} ({s.why}) at {s.where}" for step, syncs in found.items()
                  if step not in (0, log_step) for s in syncs]
    assert not unexpected, "host syncs outside the log step:\n" + "\n".join(unexpected)
    reads = [f"{s.op} at {s.where}" for s in found[log_step]]
    assert len(reads) == 1 and reads[0].startswith("Tensor.tolist at multikd/train/meters.py"), reads


@pytest.mark.parametrize("strategy", [  # the fast tests keep four kinds, the full suite all
    s if s in FAST_STRATEGIES else pytest.param(s, marks=pytest.mark.slow)
    for s in list_strategies()])
def test_distill_steps_read_nothing_but_the_log(setup, strategy):
    from multikd.method.strategies import STRATEGIES

    gamma = 0.5 if STRATEGIES[strategy].needs_features else 0.0  # mtkd-rl reads features
    _assert_hot_path(_epoch_syncs(setup, strategy, strategy=strategy, gamma=gamma))


@pytest.mark.parametrize("name, kw", [
    ("features", {"strategy": "ce-filter", "gamma": 0.5}),
    pytest.param("mmkd_features", {"strategy": "mmkd", "gamma": 0.5},  # Gram net + meta step
                 marks=pytest.mark.slow),
    ("amp_channels_last", {"strategy": "ca-mkd", "amp": True}),
    ("teacher", {"kind": "teacher"}),
])
def test_feature_amp_and_plain_steps_read_nothing_but_the_log(setup, name, kw):
    _assert_hot_path(_epoch_syncs(setup, name, **kw))


@pytest.mark.parametrize("feature_loss", [  # the fast tests keep three, the full suite all
    n if n in FAST_FEATURE_LOSSES else pytest.param(n, marks=pytest.mark.slow)
    for n in FEATURE_LOSS_REGISTRY if n != "mse"])
def test_feature_module_steps_read_nothing_but_the_log(setup, feature_loss):
    """Every feature loss of the zoo (AT ... ReviewKD, CRD's sampling and memory update
    included) runs without a host read."""
    params = {"nce_k": 8, "feat_dim": 8} if feature_loss == "crd" else {}
    kw = dict(strategy="ce-filter", gamma=0.5, feature_loss=feature_loss, feature_params=params)
    root, checkpoints, splits = setup
    if feature_loss == "crd":  # its data yields each sample's index
        splits = build_data(_config(root, checkpoints, "crd_data", **kw), seed=0)
    _assert_hot_path(_epoch_syncs((root, checkpoints, splits), f"fm_{feature_loss}", **kw))


@pytest.mark.parametrize("strategy, merge", [("ca-mkd", "restricted"), ("uniform", "concat")])
def test_steps_with_teachers_of_part_of_the_classes_read_nothing_but_the_log(
        setup, strategy, merge):
    root, _, splits = setup
    halves = _random_teachers(root, "half", outputs=5, seed=200)
    found = _epoch_syncs((root, halves, splits), f"partial_{merge}", strategy=strategy,
                         classes=[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], merge=merge)
    _assert_hot_path(found)


def test_first_batch_is_checked_and_cpu_batches_by_default(setup):
    """Warm-up syncs are the teachers' finiteness check; by default every CPU step has it."""
    root, checkpoints, splits = setup
    run = engine.prepare_run(_config(root, checkpoints, "default_check"), splits=splits,
                             teacher_acc={})
    assert run.parts.module.check_every_cpu_batch is True
    run.begin_epoch(1)
    for step, batch in enumerate(run.train_loader):
        with HostSyncDetector(include_cpu=True) as watch:
            run.train_step(step, batch[0], batch[1])
        reads = [s for s in watch.syncs if "strategies/base.py" in s.where]
        assert [s.op for s in reads] == ["aten._local_scalar_dense.default"], watch.report()
        if step == 1:
            break
