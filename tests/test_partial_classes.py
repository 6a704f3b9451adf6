"""Teachers of part of the label space (#18 item 2): ``--classes`` restricts a run to some
classes, relabelled 0..m-1 and recorded in its config.yaml (merging such teachers:
tests/test_label_merge.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from multikd.cli import main
from multikd.data import build_datasets
from multikd.errors import ConfigError, DataError
from multikd.train.config import parse_classes

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 160, "test_size": 64, "seed": 0}
DATA = ["--batch-size", "32", "--dataset", "synthetic", "--set",
        "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet"]


def test_parse_classes():
    assert parse_classes("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    for bad in ("5-x", "3-1", "", "a"):
        with pytest.raises(ConfigError):
            parse_classes(bad)


def test_datasets_keep_the_classes_relabelled_in_order():
    full = build_datasets("synthetic", synthetic=SYNTH)
    part = build_datasets("synthetic", synthetic=SYNTH, classes=[7, 2])
    assert part.num_classes == 2 and part.class_names == [full.class_names[7], full.class_names[2]]
    for split in ("train", "test"):
        a, b = getattr(full, split), getattr(part, split)
        keep = (a.labels == 7) | (a.labels == 2)
        assert torch.equal(b.images, a.images[keep])
        assert torch.equal(b.labels, torch.where(a.labels[keep] == 7, 0, 1))
    with pytest.raises(DataError, match=r"data.classes \[10\] lie outside .* 0..9"):
        build_datasets("synthetic", synthetic=SYNTH, classes=[3, 10])


@pytest.mark.slow  # a training run
def test_train_teacher_on_half_the_classes(tmp_path, capsys):
    out = tmp_path / "half"
    assert main(["train-teacher", "--arch", "resnet8", "--classes", "0-4", "--epochs", "1",
                 "--out", str(out), *DATA]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["classes"] == [0, 1, 2, 3, 4]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["num_classes"] == 5 and state["model"]["fc.weight"].shape[0] == 5
    labels = np.load(out / "predictions.npz")["label"]
    assert set(labels.tolist()) <= set(range(5))  # tested on its own classes only
    # a 10-class student takes it: classes 5-9 are taught by their labels alone
    assert main(["distill", "--student", "resnet8", "--teachers-from", str(out), "--epochs", "1",
                 "--out", str(tmp_path / "s"), *DATA]) == 0
    run = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert run["teachers"][0]["classes"] == [0, 1, 2, 3, 4]
    # --teacher ARCH=RUN/checkpoint.pt reads them back from the run's config.yaml too
    assert main(["distill", "--student", "resnet8", "--teacher",
                 f"resnet8={out / 'checkpoint.pt'}", "--show-config", *DATA]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["teachers"][0]["classes"] == [0, 1, 2, 3, 4]
    # with no label read, classes 5-9 have no teacher: a clear error naming them
    assert main(["distill", "--student", "resnet8", "--teachers-from", str(out), "--epochs", "1",
                 "--set", "data.labeled_fraction=0", "--out", str(tmp_path / "s0"), *DATA]) != 0
    err = capsys.readouterr().err
    assert "classes 5-9 are in no teacher's classes" in err and "Traceback" not in err
