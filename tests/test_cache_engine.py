"""The teacher cache in the engine: a cached run equals the live one, a warm cache runs no
teacher on training batches, and what the cache cannot serve is refused up front."""


import pytest
from run_helpers import read_metrics, synthetic_args, train_two_teachers

from multikd.cli import main
from multikd.train.config import RunConfig, TeacherConfig, config_hash, resolve, set_value
from multikd.method.ensemble import TeacherEnsemble

DATA = synthetic_args(train_size=64, test_size=32)
TIMING = {"epoch_time_s", "images_per_s"}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return train_two_teachers(tmp_path_factory.mktemp("teachers"), DATA)


def distill(teachers, out, *extra) -> int:
    args = ["distill", "--student", "resnet8", "--teachers-from", str(teachers / "tA"),
            str(teachers / "tB"), "--strategy", "ce-filter", "--epochs", "2"]
    return main([*args, "--out", str(out), *DATA, *extra])


def cache_args(directory, dtype):
    return ["--set", f"runtime.teacher_cache={directory}",
            "--set", f"runtime.teacher_cache_dtype={dtype}"]


@pytest.fixture(scope="module")
def runs(teachers, tmp_path_factory):
    """A live run, then the same run with an fp32 cache twice (cold, then warm), counting
    the teacher ensemble's forward passes during the warm one."""
    root = tmp_path_factory.mktemp("distill")
    assert distill(teachers, root / "live") == 0
    assert distill(teachers, root / "cold", *cache_args(root / "cache", "float32")) == 0
    calls = []
    original = TeacherEnsemble.forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TeacherEnsemble, "forward", lambda self, *a, **k: calls.append(1)
                   or original(self, *a, **k))
        assert distill(teachers, root / "warm", *cache_args(root / "cache", "float32")) == 0
    return root, len(calls)


def test_fp32_cache_gives_the_live_runs_metrics_exactly(runs):
    root, _ = runs
    live, cold, warm = (read_metrics(root / name) for name in ("live", "cold", "warm"))
    assert len(live) == len(cold) == len(warm) == 2
    for row_live, row_cold, row_warm in zip(live, cold, warm):
        assert set(row_cold) == set(row_live) | {"teacher_cache_hit_rate"}
        for key in set(row_live) - TIMING:
            assert row_cold[key] == row_live[key] == row_warm[key], key
    assert float(cold[0]["loss_kd"]) > 0


def test_warm_cache_runs_no_teacher_on_training_batches(runs):
    root, calls = runs
    cold, warm = read_metrics(root / "cold"), read_metrics(root / "warm")
    # 96 samples x 162 views: the cold run's second epoch draws new views, so it misses
    assert [float(r["teacher_cache_hit_rate"]) for r in cold] == [0.0, 0.0]
    assert [float(r["teacher_cache_hit_rate"]) for r in warm] == [1.0, 1.0]
    assert calls == 0


@pytest.mark.slow
def test_fp16_cache_is_the_same_cold_or_warm_and_close_to_live(runs, teachers, tmp_path):
    root, _ = runs
    for name in ("a", "b"):
        assert distill(teachers, tmp_path / name, *cache_args(tmp_path / "cache", "float16")) == 0
    cold, warm = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    live = read_metrics(root / "live")
    assert [float(r["teacher_cache_hit_rate"]) for r in warm] == [1.0, 1.0]
    for row_cold, row_warm, row_live in zip(cold, warm, live):
        for key in set(row_live) - TIMING:
            assert row_cold[key] == row_warm[key], key
        assert float(row_cold["loss_total"]) == pytest.approx(float(row_live["loss_total"]),
                                                              rel=1e-3)


def test_feature_loss_with_the_cache_is_a_cli_error(teachers, tmp_path, capsys):
    code = distill(teachers, tmp_path / "run", "--gamma", "0.5",
                   *cache_args(tmp_path / "cache", "float16"))
    err = capsys.readouterr().err
    assert code == 2
    assert "runtime.teacher_cache" in err and "gamma" in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


def test_cache_folder_and_budget_do_not_change_the_experiments_hash():
    off = resolve(RunConfig(kind="distill", teachers=[TeacherConfig(arch="resnet8")]))
    base = resolve(off)
    set_value(base, "runtime.teacher_cache", "/a")
    h = config_hash(base)
    assert h != config_hash(off)  # fp16 storage rounds the teachers' logits
    for key, value in (("runtime.teacher_cache", "/b"), ("runtime.teacher_cache_budget", 123)):
        changed = resolve(base)
        set_value(changed, key, value)
        assert config_hash(changed) == h, key
    fp32 = resolve(base)
    set_value(fp32, "runtime.teacher_cache_dtype", "float32")
    assert config_hash(fp32) != h


@pytest.mark.slow
def test_lockstep_group_is_served_by_one_warm_cache(runs, tmp_path):
    from multikd.train.config import load_config
    from multikd.train.lockstep import train_lockstep

    root, _ = runs
    configs = []
    for strategy in ("ce-filter", "uniform"):
        cfg = load_config(root / "warm" / "config.yaml")
        cfg.strategy.name, cfg.strategy.params = strategy, {}
        cfg.output.run_dir = str(tmp_path / strategy)
        configs.append(cfg)
    calls = []
    original = TeacherEnsemble.forward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TeacherEnsemble, "forward", lambda self, *a, **k: calls.append(1)
                   or original(self, *a, **k))
        train_lockstep(configs)
    assert calls == []
    live = read_metrics(root / "live")
    member, other = read_metrics(tmp_path / "ce-filter"), read_metrics(tmp_path / "uniform")
    for row_member, row_other, row_live in zip(member, other, live):
        assert row_member["teacher_cache_hit_rate"] == row_other["teacher_cache_hit_rate"] == "1.0"
        for key in set(row_live) - TIMING:
            assert row_member[key] == row_live[key], key
    assert other[0]["loss_kd"] != member[0]["loss_kd"]


def test_lockstep_refuses_members_that_differ_in_the_cache(runs, tmp_path):
    from multikd.train.config import load_config
    from multikd.errors import ConfigError
    from multikd.train.lockstep import check_compatible

    root, _ = runs
    with_cache = load_config(root / "warm" / "config.yaml")
    without = load_config(root / "live" / "config.yaml")
    with pytest.raises(ConfigError, match="runtime.teacher_cache"):
        check_compatible([with_cache, without])
