"""The multi-teacher cross end to end (issue 36, "done when"): strategies (uniform,
ce-filter) x feature losses (none: KD alone, AT, CRD) as one tiny synthetic suite through
``multikd bench`` in lockstep, then ``multikd table`` with every cell filled, and paired to
``uniform``.

Lockstep shares one teacher pass among the runs whose feature losses read the same teacher
maps (KD alone reads none and joins a group): AT reads every stage, CRD the pooled vector,
so the suite trains as two groups, each with one teacher forward per batch, not one per run.
"""

from __future__ import annotations

import csv
import io
import logging

import pytest
import yaml
from run_helpers import tiny_suite

from multikd.cli import main
from multikd.method.ensemble import TeacherEnsemble
from multikd.train import lockstep

FEATURES = {
    "at": {"feature_loss": "at", "gamma": 1000.0},
    "crd": {"feature_loss": "crd", "gamma": 0.8, "feature_params": {"nce_k": 16, "feat_dim": 8}},
}
STRATEGIES = ("uniform", "ce-filter")
EPOCHS, STEPS = 2, 6  # 96 training images in batches of 16


def _suite(order: tuple[str, ...]) -> dict:
    strategies = []
    for feature in order:
        for name in STRATEGIES:
            if feature == "kd":
                strategies.append({"name": name, "variants": ["logits"]})
            else:
                strategies.append({"name": name, "label": f"{name}-{feature}",
                                   "loss": FEATURES[feature], "variants": ["logits+feat"]})
    return tiny_suite(
        "cross", EPOCHS, teachers={"t_a": {"arch": "resnet8", "seed": 1},
                                   "t_b": {"arch": "resnet8", "seed": 2}},
        teacher_sets={"duo": ["t_a", "t_b"]},
        pairs=[{"teachers": "duo", "students": ["resnet8"]}],
        features={"gamma": 1.0}, strategies=strategies, baseline=False,
    )


@pytest.mark.slow
def test_strategies_cross_feature_losses_in_lockstep_with_a_paired_table(
        tmp_path, capsys, caplog, monkeypatch):
    # KD alone first, then CRD: the KD runs, prepared first, share their data with the CRD
    # runs of their group, which read each sample's index (the group's loader yields it)
    order = ("kd", "crd", "at")
    groups, passes = [], []
    train_together = lockstep._train_together
    forward = TeacherEnsemble.forward

    training = []

    def recording_train_together(members, start):
        groups.append(sorted(m.run.run.path.name for m in members))
        passes.append(0)
        training.append(True)
        try:
            train_together(members, start)
        finally:
            training.pop()

    def counting_forward(self, *args, **kwargs):
        if training:  # the group's teacher passes (none in the evaluation: the student's)
            passes[-1] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(lockstep, "_train_together", recording_train_together)
    monkeypatch.setattr(TeacherEnsemble, "forward", counting_forward)
    suite_file = tmp_path / "cross.yaml"
    suite_file.write_text(yaml.safe_dump(_suite(order)))
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="multikd.train.lockstep")
    assert main(["bench", str(suite_file), "--out", str(out), "--quiet"]) == 0

    # two groups by what the teachers' taps are: KD alone joins the first; none is refused
    assert "lockstep: 2 groups by tapped teacher layers" in caplog.text
    at = sorted(f"{s}-at+feat_s0" for s in STRATEGIES)
    crd = sorted(f"{s}-crd+feat_s0" for s in STRATEGIES)
    kd = sorted(f"{s}_s0" for s in STRATEGIES)
    assert groups == [sorted(crd + kd), at]
    # one shared teacher pass per batch and group (the ensemble runs in eval mode)
    assert passes == [EPOCHS * STEPS] * 2

    # every cell of the cross filled: accuracy, and the paired difference to uniform
    labels = [*STRATEGIES, *(f"{s}-{f} +feat" for f in FEATURES for s in STRATEGIES)]
    (row,) = _csv_rows(capsys, ["table", str(out / "runs"), "--format", "csv"])
    for label in labels:
        assert row[f"{label} n"] == "1" and 0 <= float(row[f"{label} mean"]) <= 100, label
    (paired,) = _csv_rows(capsys, ["table", str(out / "runs"), "--vs", "uniform",
                                   "--format", "csv"])
    assert float(paired["uniform diff"]) == float(row["uniform mean"])  # the reference column
    for label in labels[1:]:
        if label == "uniform":
            continue
        low, diff, high = (float(paired[f"{label} {k}"]) for k in ("low", "diff", "high"))
        assert paired[f"{label} n"] == "1" and paired[f"{label} test"] == "bootstrap", label
        assert low <= diff <= high, label
        assert diff == pytest.approx(float(row[f"{label} mean"]) - float(row["uniform mean"]))
    assert (out / "table_paired_vs_uniform_last.md").exists()  # the suite's own report


def _csv_rows(capsys, args: list[str]) -> list[dict]:
    capsys.readouterr()
    assert main(args) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def test_a_group_whose_member_reads_sample_indices_loads_them_for_all(tmp_path, monkeypatch):
    """The members of a lockstep group share one data split and one loader: when a member's
    feature loss reads each sample's index (CRD) and a KD-alone member is prepared first,
    the group's split still yields the indices."""
    from types import SimpleNamespace

    from multikd.train import engine
    from multikd.train.build import build_data
    from multikd.train.config import build_config, resolve

    synth = '{"num_classes": 4, "num_superclasses": 2, "train_size": 32, "test_size": 8, "seed": 0}'
    common = ["kind=distill", "model.arch=resnet8", "teachers=[{arch: resnet8}]",
              "data.dataset=synthetic", f"data.synthetic={synth}", "runtime.device=cpu"]
    kd = build_config(sets=[*common, f"output.run_dir={tmp_path / 'kd'}"])
    crd = build_config(sets=[*common, f"output.run_dir={tmp_path / 'crd'}", "loss.gamma=0.8",
                             "loss.feature_loss=crd", "loss.feature_params={nce_k: 4}"])
    given = []

    def prepare(cfg, resuming=False, splits=None, teacher_acc=None):  # the engine's data part
        splits = splits if splits is not None else build_data(cfg, cfg.runtime.seed)
        given.append(splits)
        return SimpleNamespace(splits=splits, teacher_acc={}, start_epoch=1,
                               parts=SimpleNamespace(ensemble=None))

    monkeypatch.setattr(engine, "prepare_run", prepare)
    monkeypatch.setattr(lockstep, "_train_together", lambda members, start: None)
    lockstep._train_pending([resolve(kd), resolve(crd)])
    assert len(given) == 2 and given[0] is given[1]
    assert given[0].train.return_index and len(given[0].train[0]) == 4
