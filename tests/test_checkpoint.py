"""Checkpoint reading, strict loading, mismatch diagnosis, atomic saving, `multikd models`."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from multikd.cli import main
from multikd.errors import CheckpointError
from multikd.models import create_model
from multikd.models.checkpoint import (
    guess_architectures,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from zoo_reference import reference_shapes, zoo_facts

X = torch.linspace(-1, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32)


def _trained_like(arch="resnet8", num_classes=10, seed=1):
    """A model whose weights and BN statistics differ from a fresh one's."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if v.is_floating_point():
                v.add_(0.05 * torch.randn_like(v))
                if name.endswith("running_var"):
                    v.abs_()
    return model.eval()


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


@pytest.fixture(scope="module")
def source():
    return _trained_like()


def _formats(state):
    return {
        "published": {"model": state, "epoch": 240, "best_acc": torch.tensor(71.5)},
        "bare": state,
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "compiled": {f"_orig_mod.{k}": v for k, v in state.items()},
        "state_dict": {"state_dict": state},
        "package": {
            "model": state, "arch": "resnet8", "num_classes": 10, "epoch": 7,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.05, "params": [0, 1]}]},
        },
    }


@pytest.mark.parametrize("fmt", list(_formats({})))
def test_round_trip_every_format(tmp_path, source, fmt):
    obj = _formats(source.state_dict())[fmt]
    path = save_checkpoint(obj, tmp_path / "sub" / f"{fmt}.pth")
    model = create_model("resnet8", num_classes=10)
    assert not torch.equal(_logits(model), _logits(source))

    meta = load_checkpoint(model, path)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    expected_meta = {k: v for k, v in obj.items() if k not in ("model", "state_dict")}
    if fmt in ("bare", "compiled"):
        expected_meta = {}
    assert meta.keys() == expected_meta.keys()


def test_in_memory_dict_run_dir_and_create_model(tmp_path, source):
    state = source.state_dict()
    model = create_model("resnet8", num_classes=10)
    load_checkpoint(model, {"model": state})
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)

    package = {"model": state, "arch": "resnet8", "num_classes": 10}
    save_checkpoint(package, tmp_path / "checkpoint.pt")
    assert read_checkpoint(tmp_path).num_classes == 10
    built = create_model("resnet8", num_classes=10, checkpoint=tmp_path / "checkpoint.pt")
    torch.testing.assert_close(_logits(built), _logits(source), rtol=0, atol=0)


def test_wrapped_model_is_loaded_through(source):
    model = create_model("resnet8", num_classes=10)
    load_checkpoint(torch.nn.DataParallel(model), {"model": source.state_dict()})
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)


def test_missing_num_batches_tracked_is_tolerated(source):
    """Files from PyTorch < 0.4.1 lack BN counters; PyTorch's own loader accepts that too."""
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = create_model("resnet8", num_classes=10)
    load_checkpoint(model, state)
    torch.testing.assert_close(_logits(model), _logits(source), rtol=0, atol=0)


def test_loading_converts_dtype_into_the_model(source):
    model = create_model("resnet8", num_classes=10).double()
    load_checkpoint(model, {k: v.half() if v.is_floating_point() else v
                            for k, v in source.state_dict().items()})
    assert model.conv1.weight.dtype == torch.float64
    expected = source.conv1.weight.double()
    torch.testing.assert_close(model.conv1.weight, expected, atol=1e-3, rtol=1e-3)


def test_wrong_architecture_names_keys_and_the_likely_one(source):
    model = create_model("resnet8x4", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, {"model": source.state_dict()}, arch="resnet8x4")
    message = str(err.value)
    assert "does not fit resnet8x4" in message
    # resnet8x4's first stage has a 32->64 downsample that resnet8 lacks (5 tensors + counter
    # tolerated as missing); 46 shared keys have other widths.
    assert "5 missing keys: layer1.0.downsample.0.weight" in message
    assert "46 wrongly shaped keys: conv1.weight (model [32, 3, 3, 3], file [16, 3, 3, 3])" in (
        message
    )
    assert "(41 more)" in message
    assert "unexpected" not in message
    assert "those of: resnet8 (10 classes)" in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "a failed load must leave the model untouched"


def test_wrong_class_count_and_extra_keys(source):
    state = dict(source.state_dict())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("resnet8", num_classes=100), state)
    message = str(err.value)
    assert "2 wrongly shaped keys: fc.weight (model [100, 64], file [10, 64]), fc.bias" in message
    assert "missing" not in message
    assert "resnet8 (10 classes)" in message

    state["proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(create_model("resnet8", num_classes=10), {"model": state, "arch": "x"})
    message = str(err.value)
    assert "1 unexpected keys: proj.weight" in message
    assert "the file records arch 'x'" in message
    assert "match no zoo architecture" in message


def test_every_reference_architecture_is_recognised_by_its_shapes():
    for arch in zoo_facts():
        shapes = reference_shapes(arch)
        assert guess_architectures(shapes) == [f"{arch} (100 classes)"], arch
        classifier = _classifier_keys(shapes)
        widened = {k: ((7, *v[1:]) if k in classifier else v) for k, v in shapes.items()}
        assert guess_architectures(widened) == [f"{arch} (7 classes)"], arch


def _classifier_keys(shapes):
    """The last 2-D weight and its bias (reference key order ends with the classifier)."""
    weight = [k for k, v in shapes.items() if len(v) == 2][-1]
    return {weight, weight.replace("weight", "bias")}


class _Payload:
    """Unpickling it would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.makedirs, ("/tmp/multikd-should-not-exist",))


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "no checkpoint file at"),
        (b"not a checkpoint at all", "truncated or not a file written by torch.save"),
        ("truncated", "truncated or not a file written by torch.save"),
        (torch.zeros(3), "holds a Tensor, not a checkpoint"),
        ({"epoch": 3, "acc": 1.0}, "is not a model checkpoint"),
        ({"model": {"conv1.weight": "text"}}, "is not a model checkpoint"),
        ({}, "is not a model checkpoint"),
        ({"model": {}, "payload": _Payload()}, "stores Python objects besides tensors"),
    ],
)
def test_unusable_files_raise_clear_errors(tmp_path, source, content, expected):
    path = tmp_path / "ckpt.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        save_checkpoint({"model": source.state_dict()}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif content is not None:
        with open(path, "wb") as f:
            torch.save(content, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(create_model("resnet8", num_classes=10), path)
    assert not os.path.exists("/tmp/multikd-should-not-exist")


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="folder without a checkpoint.pt"):
        read_checkpoint(tmp_path)


def test_save_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)
    with pytest.raises(Exception):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "bad": lambda: None}, path)
    assert os.listdir(tmp_path) == ["ckpt.pt"], "no temp file left behind"
    assert torch.equal(read_checkpoint(path).state["w"], torch.ones(2)), "old file intact"
    save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(read_checkpoint(path).state["w"], torch.zeros(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.slow
def test_cli_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for arch, facts in zoo_facts().items():
        line = next(row for row in out.splitlines() if row.split()[:1] == [arch])
        assert f"{facts['params']:,}" in line
    assert "resnet8x4" in out and "32x32x32, 64x32x32, 128x16x16, 256x8x8" in out


def test_cli_models_check(tmp_path, source, capsys):
    path = save_checkpoint(
        {"model": source.state_dict(), "arch": "resnet8", "num_classes": 10, "epoch": 7},
        tmp_path / "ckpt.pt",
    )
    assert main(["models", "check", "--checkpoint", str(path), "--arch", "resnet8"]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "fits resnet8 (10 classes): 56 tensors, 78,042 parameters" in out
    assert "epoch 7" in out

    assert main(["models", "check", "--checkpoint", str(path), "--arch", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("multikd: error: checkpoint") and "Traceback" not in err
    assert "60 missing keys" in err and "resnet8 (10 classes)" in err

    code = main(
        ["models", "check", "--checkpoint", str(path), "--arch", "resnet8", "--num-classes", "100"]
    )
    assert code == 2 and "fc.weight (model [100, 64], file [10, 64])" in capsys.readouterr().err
