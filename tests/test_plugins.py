"""Plugins: a researcher's own file adds a strategy or a loss without a fork, is recorded with
its hash in every run, and breaks with one clear message naming the file and the line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from multikd import plugins
from multikd.cli import main
from multikd.errors import PluginError
from multikd.method.logit_losses import LOGIT_LOSS_REGISTRY
from multikd.method.strategies import STRATEGIES, create_strategy
from multikd.train.config import RunConfig, config_hash, load_config
from run_helpers import synthetic_args, tiny_suite, train_two_teachers

EXAMPLES = Path(__file__).parents[1] / "examples" / "plugins"


@pytest.fixture(autouse=True)
def _no_plugin_left_behind(monkeypatch):
    monkeypatch.delenv(plugins.ENV, raising=False)
    with plugins.restoring():
        yield


@pytest.fixture
def outside(tmp_path) -> Path:
    """The two example plugins copied to a folder outside the repository."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("my_strategy.py", "my_logit_loss.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ loading and recording
def test_the_examples_join_the_registries_and_are_recorded_with_their_hash(outside):
    strategy, loss = outside / "my_strategy.py", outside / "my_logit_loss.py"
    records = plugins.load_plugins([strategy, loss])
    assert records == [{"path": str(strategy), "sha256": _sha(strategy)},
                       {"path": str(loss), "sha256": _sha(loss)}]
    assert plugins.loaded() == records
    assert plugins.load_plugin(strategy) == records[0]  # the same bytes again: nothing new
    ce = torch.tensor([[0.1, 2.0], [1.0, 0.5]])
    weights = create_strategy("softmin_ce", tau=0.5).weights(ce, torch.zeros(2, 2, 3),
                                                           torch.tensor([0, 1]))
    assert torch.allclose(weights, torch.softmax(-ce / 0.5, dim=0))
    student, teachers = torch.randn(4, 5), torch.randn(2, 4, 5)
    out = LOGIT_LOSS_REGISTRY["sym-kl"](student, teachers, None, 4.0)
    p, q = torch.softmax(teachers / 4, -1), torch.softmax(student / 4, -1)
    by_hand = 16 / 2 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1))
    assert out.shape == (2, 4) and torch.allclose(out, by_hand, atol=1e-5)


def test_the_registries_forget_a_plugin_after_the_block():
    with plugins.restoring():
        plugins.load_plugin(EXAMPLES / "my_strategy.py")
        assert "softmin-ce" in STRATEGIES
    assert "softmin-ce" not in STRATEGIES and plugins.loaded() == []


def test_a_changed_file_loaded_again_replaces_its_names(outside):
    path = outside / "my_strategy.py"
    plugins.load_plugin(path)
    path.write_text(path.read_text().replace('"softmin-ce"', '"softmin-ce2"'))
    plugins.load_plugin(path)
    assert "softmin-ce2" in STRATEGIES and "softmin-ce" not in STRATEGIES
    assert plugins.loaded() == [{"path": str(path), "sha256": _sha(path)}]


def test_the_config_records_plugins_outside_its_hash_and_loads_them_when_read(outside, tmp_path):
    config = RunConfig()
    before = config_hash(config)
    config.plugins = [{"path": str(outside / "my_logit_loss.py"), "sha256": "x" * 64}]
    assert config_hash(RunConfig.from_dict(config.to_dict())) == before
    data = RunConfig().to_dict() | {"plugins": config.plugins}
    data["loss"]["logit_loss"] = "sym-kl"  # a plugin's name: valid once its file is loaded
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    assert load_config(tmp_path / "config.yaml").loss.logit_loss == "sym-kl"
    assert "sym-kl" in LOGIT_LOSS_REGISTRY
    assert plugins.changes(config.plugins) == [
        f"plugin {outside / 'my_logit_loss.py'} changed since the run used it (sha256 "
        f"{'x' * 12} then, {_sha(outside / 'my_logit_loss.py')[:12]} now)"]


def test_env_and_flag_plugins_show_in_multikd_list(outside, monkeypatch, capsys):
    monkeypatch.setenv(plugins.ENV, str(outside / "my_strategy.py"))
    assert main(["list", "--plugin", str(outside / "my_logit_loss.py")]) == 0
    out = capsys.readouterr().out
    assert "softmin-ce" in out and "sym-kl" in out


# ------------------------------------------------------------------ broken plugins
BROKEN = {
    "syntax": ("import torch\n\ndef f(:\n    pass\n", "line 3: syntax error"),
    "clash": ("from multikd.method.strategies import Strategy, register_strategy\n\n\n"
              "@register_strategy('uniform')\nclass Mine(Strategy):\n"
              "    def _select(self, ce, logits, labels):\n        return None\n",
              "line 4: strategy 'uniform' is registered twice"),
    "no_select": ("from multikd.method.strategies import Strategy, register_strategy\n\n\n"
                  "@register_strategy('lazy')\nclass Lazy(Strategy):\n    tau = 1\n",
                  "line 4: strategy 'lazy' defines no _select(self, ce [K,B]"),
    "loss_signature": ("from multikd.method.logit_losses import register_logit_loss\n\n\n"
                       "@register_logit_loss('bad')\ndef bad(s, t, temperature):\n"
                       "    return s\n",
                       "line 4: logit loss 'bad' must take (student, teachers, labels, "
                       "temperature, ...) first"),
    "raises": ("x = 1\nraise RuntimeError('no GPU here')\n", "line 2: RuntimeError: no GPU here"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_one_message_naming_file_and_line(kind, tmp_path, capsys):
    text, expected = BROKEN[kind]
    path = tmp_path / f"{kind}.py"
    path.write_text(text)
    names = {k: set(r.names()) for k, r in plugins._registries().items()}
    with pytest.raises(PluginError, match=None) as err:
        plugins.load_plugin(path)
    assert f"plugin {path} {expected}" in str(err.value)
    assert {k: set(r.names()) for k, r in plugins._registries().items()} == names
    assert plugins.loaded() == []
    assert main(["list", "--plugin", str(path)]) == 2  # the CLI: the message, no traceback
    stderr = capsys.readouterr().err
    assert f"plugin {path} {expected}" in stderr and "Traceback" not in stderr


def test_a_missing_plugin_file_says_so(tmp_path, capsys):
    assert main(["list", "--plugin", str(tmp_path / "nope.py")]) == 2
    assert "no such Python file" in capsys.readouterr().err


# ------------------------------------------------------------------ end to end
def _distill(outside, teachers, out, *more):
    return main(["distill", "--plugin", str(outside / "my_strategy.py"),
                 "--plugin", str(outside / "my_logit_loss.py"), "--strategy", "softmin-ce",
                 "--strategy-param", "tau=0.5", "--set", "loss.logit_loss=sym-kl",
                 "--teachers-from", str(teachers / "tA"), str(teachers / "tB"),
                 "--student", "resnet8", "--epochs", "1", "--out", str(out),
                 *synthetic_args(64, 32), *more])


@pytest.mark.slow
def test_distill_with_plugins_records_them_and_resume_refuses_a_changed_file(
        outside, tmp_path, capsys):
    teachers = train_two_teachers(tmp_path / "t", synthetic_args(64, 32))
    run = tmp_path / "run"
    assert _distill(outside, teachers, run) == 0
    expected = [{"path": str(outside / name), "sha256": _sha(outside / name)}
                for name in ("my_strategy.py", "my_logit_loss.py")]
    config = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["plugins"] == expected and summary["plugins"] == expected
    assert config["strategy"]["name"] == "softmin-ce" and config["loss"]["logit_loss"] == "sym-kl"

    (run / "summary.json").unlink()  # the run now looks stopped after its last checkpoint
    path = outside / "my_strategy.py"
    original = path.read_text()
    path.write_text(original + "\n# tuned\n")
    capsys.readouterr()
    assert main(["distill", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot resume {run} exactly: plugin {path} changed since the run used it" in err
    assert "Traceback" not in err
    path.write_text(original)
    assert main(["distill", "--resume", str(run), "--quiet"]) == 0


@pytest.mark.slow
def test_a_plugin_strategy_and_loss_run_in_a_lockstep_suite_beside_the_baselines(
        outside, tmp_path, capsys, caplog):
    suite = tiny_suite(
        "plug", 1, teachers={"t_a": {"arch": "resnet8", "seed": 1},
                             "t_b": {"arch": "resnet8", "seed": 2}},
        teacher_sets={"duo": ["t_a", "t_b"]},
        pairs=[{"teachers": "duo", "students": ["resnet8"]}],
        strategies=["uniform", "ca-mkd",
                    {"name": "softmin-ce", "params": {"tau": 0.5}, "label": "softmin",
                     "loss": {"logit_loss": "sym-kl"}}],
        plugins=["../mine/my_strategy.py", str(outside / "my_logit_loss.py")],
    )
    (tmp_path / "suites").mkdir()
    suite_file = tmp_path / "suites" / "plug.yaml"
    suite_file.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    # two spawned worker processes, each loading the plugins its runs recorded
    assert main(["bench", str(suite_file), "--out", str(out), "--quiet", "--jobs", "2",
                 "--max-runs-per-job", "2"]) == 0
    run = out / "runs" / "duo" / "resnet8" / "softmin_s0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["strategy"]["name"] == "softmin-ce"
    assert [p["path"] for p in config["plugins"]] == [
        str(outside / "my_strategy.py"), str(outside / "my_logit_loss.py")]
    capsys.readouterr()
    assert main(["table", str(out / "runs"), "--vs", "uniform"]) == 0
    table = capsys.readouterr().out
    assert "softmin" in table and "ca-mkd" in table

    path = outside / "my_logit_loss.py"
    path.write_text(path.read_text() + "\n# changed\n")
    caplog.clear()
    assert main(["table", str(out / "runs")]) == 0
    assert f"plugin {path} changed since the run used it" in caplog.text


@pytest.mark.slow
def test_a_fresh_process_like_a_cluster_job_loads_the_plugins_its_plan_records(
        outside, tmp_path):
    import pickle
    import subprocess
    import sys

    from multikd.bench.runner import make_plan

    suite = tiny_suite(
        "plug", 1, teachers={"t_a": {"arch": "resnet8"}}, teacher_sets={"one": ["t_a"]},
        pairs=[{"teachers": "one", "students": ["resnet8"]}],
        strategies=[{"name": "softmin-ce", "loss": {"logit_loss": "sym-kl"}}],
        plugins=[str(outside / "my_strategy.py"), str(outside / "my_logit_loss.py")])
    (tmp_path / "plug.yaml").write_text(yaml.safe_dump(suite))
    plan = make_plan(tmp_path / "plug.yaml", tmp_path / "out")
    (tmp_path / "plan.pkl").write_bytes(pickle.dumps(plan))  # what submitit sends a job
    job = ("import pickle, sys; from multikd.train.config import resolve; "
           "plan = pickle.load(open(sys.argv[1], 'rb')); cfg = resolve(plan.runs[-1].config); "
           "print(cfg.strategy.name, cfg.loss.logit_loss)")
    done = subprocess.run([sys.executable, "-c", job, str(tmp_path / "plan.pkl")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["softmin-ce", "sym-kl"]
