"""The engine's fast paths (compile, channels_last, AMP) run end to end and keep the numbers."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from multikd.cli import main
from multikd.train.runio import RunDir
from tests.run_helpers import read_metrics, synthetic_args

TIMING = {"epoch_time_s", "images_per_s"}


def distill(out, *flags) -> list[dict]:
    """A 1-epoch resnet8 <- two random resnet8 teachers run; its metrics.csv rows."""
    args = ["distill", "--student", "resnet8", "--teacher", "resnet8", "--teacher", "resnet8",
            "--strategy", "ca-mkd", "--epochs", "1", "--out", str(out),
            *synthetic_args(64, 32), *flags]
    assert main(args) == 0
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(out)]


@pytest.fixture
def eager_compile(monkeypatch):
    """``nn.Module.compile`` with TorchDynamo's eager backend: the graph capture and guards
    of ``torch.compile`` without inductor's minute of C++ code generation."""
    compile_module = nn.Module.compile
    calls = []

    def compile_eager(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return compile_module(module, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(nn.Module, "compile", compile_eager)
    yield calls
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_run_equals_the_eager_run_and_saves_plain_keys(tmp_path, eager_compile):
    plain = distill(tmp_path / "plain")
    compiled = distill(tmp_path / "compiled", "--compile")
    assert len(eager_compile) == 3  # the student and both teachers
    assert compiled == plain
    state = RunDir(tmp_path / "compiled").load_checkpoint()
    assert not any(k.startswith("_orig_mod.") for k in state["model"])


@pytest.mark.slow  # three runs; tests/test_hot_path.py steps AMP + channels_last in the fast tests
def test_channels_last_and_amp_train_to_finite_close_numbers(tmp_path):
    plain = distill(tmp_path / "plain")[0]
    nhwc = distill(tmp_path / "nhwc", "--channels-last")[0]
    assert nhwc.keys() == plain.keys()
    for key in ("loss_total", "loss_kd", "test_loss"):
        assert float(nhwc[key]) == pytest.approx(float(plain[key]), rel=1e-3)
    amp = distill(tmp_path / "amp", "--amp", "--channels-last")[0]
    assert all(math.isfinite(float(amp[k])) for k in ("loss_total", "test_loss"))
    assert float(amp["loss_total"]) == pytest.approx(float(plain["loss_total"]), rel=0.05)
