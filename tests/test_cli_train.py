"""`multikd train-teacher | distill | eval` command lines: flags are config keys, errors are
one clear line (exit 2, no traceback)."""

import json

import pytest
import yaml

from multikd.cli import main

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 64, "test_size": 64, "seed": 0}


def shown_config(capsys, *args) -> dict:
    assert main([*args, "--show-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_distill_flags_set_their_config_keys(capsys):
    cfg = shown_config(
        capsys, "distill", "--student", "resnet8", "--teacher", "resnet20=a/ckpt.pt",
        "--teacher", "resnet20", "--strategy", "ce-filter", "--strategy-param", "margin=5e-1",
        "--strategy-param", "granularity=sample", "--alpha", "0.5", "--beta", "2",
        "--gamma", "1", "--temperature", "2", "--lr", "0.1", "--epochs", "3",
        "--batch-size", "16", "--seed", "4", "--val-size", "10", "--device", "cpu", "--amp",
        "--dataset", "cifar10", "--data-root", "/data", "--out", "runs/x", "--quiet",
    )
    assert cfg["kind"] == "distill" and cfg["model"] == {"arch": "resnet8", "checkpoint": None}
    assert cfg["teachers"] == [
        {"arch": "resnet20", "checkpoint": "a/ckpt.pt", "name": "resnet20"},
        {"arch": "resnet20", "checkpoint": None, "name": "resnet20_2"},
    ]
    assert cfg["strategy"] == {"name": "ce-filter", "params": {"margin": 0.5, "granularity": "sample"}}
    loss = cfg["loss"]
    assert (loss["alpha"], loss["beta"], loss["gamma"], loss["temperature"]) == (0.5, 2.0, 1.0, 2.0)
    o = cfg["optim"]
    assert (o["lr"], o["epochs"], o["batch_size"], o["milestones"]) == (0.1, 3, 16, [2, 3])
    assert cfg["runtime"]["seed"] == 4 and cfg["runtime"]["device"] == "cpu" and cfg["runtime"]["amp"]
    assert cfg["data"]["dataset"] == "cifar10" and cfg["data"]["data_root"] == "/data"
    assert cfg["data"]["val_size"] == 10
    assert cfg["output"]["run_dir"] == "runs/x" and cfg["output"]["quiet"] is True


def test_config_file_then_flags_then_sets(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {arch: resnet20}\noptim: {epochs: 9, lr: 0.2}\nruntime: {seed: 7}\n")
    cfg = shown_config(
        capsys, "train-teacher", "--config", str(path), "--epochs", "4", "--set", "optim.epochs=5"
    )
    assert cfg["model"]["arch"] == "resnet20" and cfg["runtime"]["seed"] == 7
    assert cfg["optim"]["lr"] == 0.2 and cfg["optim"]["epochs"] == 5


def test_student_alone_baseline_and_small_student_lr(capsys):
    cfg = shown_config(capsys, "train-teacher", "--arch", "MobileNetV2", "--kind", "student")
    assert cfg["kind"] == "student" and cfg["model"]["arch"] == "MobileNetV2"
    assert cfg["optim"]["lr"] == 0.01  # the field's convention, written out explicitly
    assert cfg["output"]["run_dir"] == "runs/student_MobileNetV2_s0"


def test_random_strategy_gets_the_run_seed_unless_given(capsys):
    base = ["distill", "--teacher", "resnet8", "--strategy", "random", "--seed", "5"]
    assert shown_config(capsys, *base)["strategy"]["params"] == {"seed": 5}
    given = shown_config(capsys, *base, "--strategy-param", "seed=1")
    assert given["strategy"]["params"] == {"seed": 1}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train-teacher", "--set", "optim.epochs=abc"], "optim.epochs expects an int, got 'abc'"),
        (["train-teacher", "--set", "optim.epoch=3"], "Did you mean epochs or warmup_epochs?"),
        (["train-teacher", "--arch", "resnet9"], "unknown model 'resnet9'"),
        (["train-teacher", "--config", "/nonexistent/c.yaml"], "does not exist"),
        (["distill", "--student", "resnet8"], "distill needs at least one teacher"),
        (["distill", "--teacher", "resnet8", "--strategy", "nope"], "unknown strategy 'nope'"),
        (["distill", "--teacher", "resnet8", "--strategy-param", "margin=1", "--strategy", "uniform"],
         "unknown parameter(s) margin"),
        (["distill", "--teacher", "resnet8", "--strategy-param", "margin"], "section.key=value"),
        (["distill", "--teacher", "=x.pt"], "ARCH or ARCH=CHECKPOINT"),
        (["train-teacher", "--resume", "somewhere", "--overwrite"], "--resume continues"),
        (["eval", "--arch", "resnet8"], "eval needs --arch and --checkpoint"),
    ],
)
def test_bad_command_lines_are_one_clear_error(capsys, args, fragment):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and fragment in err and "Traceback" not in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    args = [
        "train-teacher", "--arch", "resnet8", "--epochs", "1", "--batch-size", "32",
        "--dataset", "synthetic", "--set", "data.synthetic=" + json.dumps(SYNTH),
        "--device", "cpu", "--quiet", "--out", str(run_dir),
    ]
    assert main(args) == 0
    return run_dir


def _printed_acc(out: str, split: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith(f"{split} accuracy:"))
    return float(line.split()[2].rstrip("%"))


def test_eval_prints_the_runs_test_accuracy(finished_run, capsys):
    capsys.readouterr()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert main(["eval", "--run", str(finished_run), "--device", "cpu"]) == 0
    assert _printed_acc(capsys.readouterr().out, "test") == round(summary["last_test_acc"], 2)
    args = [
        "eval", "--arch", "resnet8", "--checkpoint", str(finished_run / "checkpoint.pt"),
        "--dataset", "synthetic", "--device", "cpu", "--val-size", "16",
    ] + [x for k, v in SYNTH.items() for x in ("--synthetic", f"{k}={v}")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert _printed_acc(out, "test") == round(summary["last_test_acc"], 2)
    assert 0 <= _printed_acc(out, "val") <= 100


def test_eval_with_the_wrong_architecture_is_a_clear_error(finished_run, capsys):
    args = ["eval", "--run", str(finished_run), "--arch", "resnet14", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: ") and "resnet14" in err and "Traceback" not in err
