"""Semi-supervised distillation (#18 item 1): a class-balanced labelled subset, unlabelled
images that only the teachers teach, label-free stand-ins for CE-based strategies, and an
extra folder of unlabelled images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from run_helpers import dry_run_suite, train_epoch
from tolerances import REF64

from multikd.cli import main
from multikd.data import build_datasets
from multikd.data.transfer import UNLABELED, labeled_subset, mask_labels, read_image_folder
from multikd.errors import ConfigError, DataError
from multikd.method import losses
from multikd.method.routing import unlabeled_teacher_ce
from multikd.train import engine
from multikd.train.config import resolve

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 320, "test_size": 64, "seed": 0}
DATA = ["--batch-size", "32", "--dataset", "synthetic", "--set",
        "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet"]


def test_the_data_layer_and_the_losses_agree_on_the_unlabelled_marker():
    assert UNLABELED == losses.UNLABELED == -100  # cross_entropy's default ignore_index


def test_labelled_subset_is_class_balanced_seeded_and_complete_at_the_ends():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    keep = labeled_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[keep], minlength=4).tolist() == [4, 3, 2, 1]
    assert np.array_equal(keep, labeled_subset(labels, 0.1, seed=3))
    assert not np.array_equal(keep, labeled_subset(labels, 0.1, seed=4))
    assert len(labeled_subset(labels, 0.0, 0)) == 0 and len(labeled_subset(labels, 1.0, 0)) == 100
    masked = mask_labels(labels, keep)
    assert (masked[keep] == labels[keep]).all() and (np.delete(masked, keep) == UNLABELED).all()


def test_build_datasets_hides_the_other_labels():
    splits = build_datasets("synthetic", synthetic=SYNTH, seed=1, labeled_fraction=0.25)
    full = build_datasets("synthetic", synthetic=SYNTH, seed=1)
    labelled = splits.train.labels != UNLABELED
    assert int(labelled.sum()) == 80
    assert torch.equal(splits.train.labels[labelled], full.train.labels[labelled])
    assert torch.equal(splits.train.images, full.train.images)
    assert torch.equal(splits.test.labels, full.test.labels)  # evaluation keeps its labels


def test_labeled_ce_is_the_mean_over_labelled_samples_and_zero_without_any():
    # float64: sum / count and a mean over the kept rows may add in different orders
    logits = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([1, UNLABELED, 3, UNLABELED, 0])
    keep = y != UNLABELED
    torch.testing.assert_close(losses.labeled_ce(logits, y),
                               F.cross_entropy(logits[keep], y[keep]), **REF64)
    assert float(losses.labeled_ce(logits, torch.full((5,), UNLABELED))) == 0.0


def test_unlabelled_teacher_ce_rules_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)  # reference check
    y = torch.tensor([0, UNLABELED, 2, UNLABELED])
    ce = F.cross_entropy(logits.reshape(8, 3), y.repeat(2), reduction="none").view(2, 4)
    p = torch.softmax(logits, -1)
    entropy = -(p * p.log()).sum(-1)
    got = unlabeled_teacher_ce(ce, logits, y, "entropy")
    expected = ce.clone()
    expected[:, [1, 3]] = entropy[:, [1, 3]]
    torch.testing.assert_close(got, expected, **REF64)
    got = unlabeled_teacher_ce(ce, logits, y, "labeled")
    mean = ce[:, [0, 2]].mean(1)
    expected[:, 1], expected[:, 3] = mean, mean
    torch.testing.assert_close(got, expected, **REF64)
    none = torch.full((4,), UNLABELED)  # no labelled sample in the batch: entropy
    zero = torch.zeros(2, 4, dtype=torch.float64)
    torch.testing.assert_close(unlabeled_teacher_ce(zero, logits, none, "labeled"), entropy,
                               **REF64)


def _run(tmp_path, name, splits, synthetic=SYNTH, **overrides):
    """One distill run on ``splits`` (made from ``synthetic``) through the engine; its
    metrics without timings."""
    from multikd.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig
    from multikd.train.config import OutputConfig, RunConfig, RuntimeConfig, StrategyConfig
    from multikd.train.config import TeacherConfig

    cfg = resolve(RunConfig(
        kind="distill",
        data=DataConfig(dataset="synthetic", synthetic=dict(synthetic), labeled_fraction=0.25),
        model=ModelConfig(arch="resnet8"),
        teachers=[TeacherConfig(arch="resnet8", name="a"), TeacherConfig(arch="resnet14", name="b")],
        strategy=StrategyConfig(name=overrides.get("strategy", "ca-mkd")),
        loss=LossConfig(gamma=1.0),
        optim=OptimConfig(batch_size=32, epochs=2),
        runtime=RuntimeConfig(device="cpu", seed=0),
        output=OutputConfig(run_dir=str(tmp_path / name), quiet=True),
    ))
    run = engine.prepare_run(cfg, splits=splits, teacher_acc={})
    for epoch in (1, 2):
        train_epoch(run, epoch)
    return pd.DataFrame(run.rows).drop(columns=["epoch_time_s", "images_per_s"])


@pytest.mark.parametrize("strategy", ["ca-mkd", pytest.param("mtkd-rl", marks=pytest.mark.slow)])
def test_unlabelled_labels_are_never_read(tmp_path, strategy):
    """Two training sets that differ only in the labels of the images outside the labelled
    subset (the real ones against random garbage): the runs are equal bit for bit, since
    those labels enter only through ``mask_labels``."""
    from dataclasses import replace

    from multikd.data.datasets import ImageDataset

    synth = dict(SYNTH, train_size=64)  # 2 batches an epoch, 16 images labelled
    clean = build_datasets("synthetic", synthetic=synth, seed=0)
    keep = labeled_subset(clean.train.labels.numpy(), 0.25, seed=0)
    garbage = clean.train.labels.numpy().copy()
    others = np.setdiff1d(np.arange(len(garbage)), keep)
    garbage[others] = np.random.default_rng(9).integers(0, 10, len(others))
    assert (garbage[others] != clean.train.labels.numpy()[others]).any()

    def splits_with(labels):
        t = clean.train
        train = ImageDataset(t.images.permute(0, 2, 3, 1).numpy(), mask_labels(labels, keep),
                             clean.mean, clean.std, augment=True, seed=0)
        return replace(clean, train=train)

    a = _run(tmp_path, "clean", splits_with(clean.train.labels.numpy()), synth, strategy=strategy)
    b = _run(tmp_path, "garbage", splits_with(garbage), synth, strategy=strategy)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a["train_acc"].notna().all()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "4", "--out", str(out),
                 *DATA]) == 0
    return out / "checkpoint.pt"


@pytest.mark.slow
def test_a_student_learns_from_the_teacher_without_any_label(teacher, tmp_path):
    assert main(["distill", "--student", "resnet8", "--teacher", f"resnet8={teacher}",
                 "--strategy", "ce-filter", "--epochs", "4", "--set", "data.labeled_fraction=0",
                 "--out", str(tmp_path / "s"), *DATA]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["last_test_acc"] > 25.0  # chance is 10%; no label was read
    metrics = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert (metrics["loss_ce"] == 0).all() and metrics["train_acc"].isna().all()


def test_unlabeled_dir_adds_resized_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "extra"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(32, 32), (48, 40), (20, 20)]):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / ("sub" if i else ".") / f"img{i}.png")
    images = read_image_folder(folder)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    splits = build_datasets("synthetic", synthetic=SYNTH, unlabeled_dir=str(folder))
    assert len(splits.train) == 323 and (splits.train.labels[-3:] == UNLABELED).all()


def test_bad_input_names_the_key(tmp_path, capsys):
    with pytest.raises(DataError, match="not a folder"):
        read_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image"):
        read_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read"):
        read_image_folder(tmp_path / "bad")
    base = ["distill", "--student", "resnet8", "--teacher", "resnet8", "--out",
            str(tmp_path / "r"), *DATA]
    cases = [
        (["--set", "data.labeled_fraction=1.5"], "data.labeled_fraction must be a number in [0, 1]"),
        (["--strategy", "mmkd", "--set", "data.labeled_fraction=0"], "needs labelled samples"),
        (["--set", "data.labeled_fraction=0", "--set", "loss.unlabeled_ce=labeled"],
         "use loss.unlabeled_ce entropy"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(["train-teacher", "--arch", "resnet8", "--set", "data.labeled_fraction=0",
                 "--out", str(tmp_path / "t"), *DATA]) != 0
    assert "learns from labels only" in capsys.readouterr().err


def test_semi_supervised_suite_dry_runs(capsys):
    out = dry_run_suite("semi-supervised", capsys)
    for fraction in ("0.1", "0.25", "1"):
        assert f"runs/hetero@labeled{fraction}/resnet8x4/student_s0" in out
