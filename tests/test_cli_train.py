"""`multikd train-teacher | distill | eval` command lines: flags are config keys, errors are
one clear line (exit 2, no traceback)."""

import argparse
import json
import re
import shlex

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
        {"arch": "resnet20", "checkpoint": "a/ckpt.pt", "name": "resnet20", "self_from_epoch": None,
         "classes": None},
        {"arch": "resnet20", "checkpoint": None, "name": "resnet20_2", "self_from_epoch": None,
         "classes": None},
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


def test_every_problem_of_a_command_line_is_reported_at_once(tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    args = ["distill", "--strategy", "nosuch", "--student", "resnet9", "--set", "optim.foo=1",
            "--teacher", f"resnet20={tmp_path / 'missing.pt'}", "--epochs", "0",
            "--out", str(a_file / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: 6 problems") and "Traceback" not in err
    lines = err.splitlines()[1:]
    for number, fragment in enumerate([
        "unknown config key 'optim.foo'", "missing.pt' does not exist", "unknown model 'resnet9'",
        "optim.epochs must be positive", "unknown strategy 'nosuch'", "is a file, not a folder",
    ], 1):
        assert lines[number - 1].startswith(f"  {number}. ") and fragment in lines[number - 1]
    assert a_file.read_text() == "not a folder"


def test_a_bad_strategy_is_reported_beside_the_missing_teacher(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["distill", "--strategy", "nosuch", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "distill needs at least one teacher" in err and "unknown strategy 'nosuch'" in err
    assert not out.exists()  # nothing is created before the command line is sound


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert main(["train-teacher", "--arch", "resnet8", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "x"


def test_out_holding_a_finished_run_is_refused_before_training(finished_run, capsys):
    assert main(["train-teacher", "--arch", "resnet8", "--out", str(finished_run)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err


def _help(*command) -> str:
    from multikd.cli import build_parser

    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                      ).choices[name]
    return parser.format_help()


def test_help_screens_say_where_teachers_come_from_and_the_usual_order():
    top = _help()
    assert top.index("train-teacher ...") < top.index("distill ...") < top.index("table RUNS_DIR")
    assert "bench --preset smoke" in top
    distill = _help("distill")
    assert "--teachers-from runs/t_res32x4" in distill  # a train-teacher run folder
    assert "models check --arch resnet32x4" in distill  # a published checkpoint, checked
    assert "--teacher timm:resnet18=" in distill  # a timm model
    assert "--teachers-from runs/t_res20" in _help("train-teacher")


@pytest.mark.parametrize("command, at_least", [((), 1), (("distill",), 5), (("train-teacher",), 5)])
def test_every_example_in_the_help_is_a_valid_command_line(command, at_least):
    from multikd.cli import build_parser

    examples = [re.split(r"\s{2,}", line.split("multikd ", 1)[1])[0].strip()
                for line in _help(*command).splitlines()
                if line.lstrip().startswith(("multikd ", "1. multikd", "2. multikd", "3. multikd"))
                and "..." not in line]
    assert len(examples) >= at_least
    for example in examples:
        build_parser().parse_args(shlex.split(example))  # argparse exits on a bad line
