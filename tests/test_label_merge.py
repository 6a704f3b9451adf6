"""Teachers of different label sets merged into one student (#18 item 2): scattered logits,
restricted renormalised distillation (Vongkulbhisal et al., CVPR 2019) checked against the
formula by hand, per-class votes, naive concatenation, teacher accuracy on their own
classes, errors, and a student merged from two half-label teachers without a label."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from run_helpers import dry_run_suite, read_metrics, tiny_suite
from torch import nn

from multikd.bench.runner import run_bench
from multikd.bench.suite import parse_suite
from multikd.cli import main
from multikd.errors import ConfigError, ModelError
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.loss_spec import LossSpec
from multikd.method.label_spaces import MASKED_LOGIT, NOT_KNOWN, ClassMaps, restrict_weights
from multikd.method.strategies import create_strategy
from tolerances import REF64

SYNTH = {"num_classes": 10, "num_superclasses": 2, "train_size": 640, "test_size": 200, "seed": 0}
DATA = ["--batch-size", "32", "--dataset", "synthetic", "--set",
        "data.synthetic=" + json.dumps(SYNTH), "--device", "cpu", "--quiet"]
EXAMPLE = torch.zeros(1, 3, 4, 4)


class Linear(nn.Module):
    """A tiny classifier on 3x4x4 images."""

    def __init__(self, classes: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _partial_ensemble(classes, num_classes=6):
    teachers = [Linear(num_classes if c is None else len(c), seed=k) for k, c in enumerate(classes)]
    return TeacherEnsemble(teachers, names=[f"t{k}" for k in range(len(classes))],
                           example_input=EXAMPLE, classes=classes, num_classes=num_classes)


def _distiller(ensemble, strategy="uniform", partial_labels=False, **loss):
    return MultiTeacherDistiller(Linear(ensemble.num_classes, seed=9), ensemble,
                                 create_strategy(strategy), LossSpec(**loss),
                                 example_input=EXAMPLE, partial_labels=partial_labels)


def test_scattered_logits_keep_each_teachers_own_softmax_and_zero_elsewhere():
    maps = ClassMaps([[3, 0, 5], None], 6)
    # float64: a softmax over 6 entries and one over 3 may take other SIMD paths
    z, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    full = maps.scatter([z, w])
    assert full.shape == (2, 4, 6) and torch.equal(full[1], w)
    p = torch.softmax(full[0], -1)
    torch.testing.assert_close(p[:, [3, 0, 5]], torch.softmax(z, -1), **REF64)
    assert torch.equal(p[:, [1, 2, 4]], torch.zeros(4, 3).double())  # exactly 0, not small
    assert (full[0, :, [1, 2, 4]] == MASKED_LOGIT).all()
    assert set(full[0].argmax(-1).tolist()) <= {3, 0, 5}
    # the float16 teacher cache keeps the mask (it is the lowest float16)
    assert torch.equal(full.half().float()[0, :, 1], torch.full((4,), MASKED_LOGIT))
    y = torch.tensor([0, 5, 2, -100])
    assert maps.local_labels(0, y).tolist() == [1, 2, NOT_KNOWN, -100]
    assert maps.knows(y).tolist() == [[True, True, False, False], [True, True, True, False]]
    assert maps.votes(y).tolist() == [[True, True, False, True], [True, True, True, True]]
    assert maps.uncovered() == [] and ClassMaps([[0, 1], [3]], 5).uncovered() == [2, 4]


def test_restricted_kd_and_mse_are_the_formula_by_hand():
    """Teacher k against softmax(s[S_k] / T), renormalised over its classes, T^2 KL; uniform
    weights over the teachers that know each label (eq. 4-5 of Vongkulbhisal et al.)."""
    classes = [[0, 1, 2], [2, 3, 4, 5]]
    ensemble = _partial_ensemble(classes)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 2, 4, 2])
    t = 3.0
    for loss in ("kd", "mse"):  # float64 throughout: a check of the formula (REF64)
        distiller = _distiller(ensemble, logit_loss=loss, temperature=t, alpha=0.0).double()
        _, losses, info = distiller(x, y)
        s = distiller.student(x)
        hand = torch.zeros(2, 4, dtype=torch.float64)
        for k, known in enumerate(classes):
            tk = ensemble.teachers[k](x)
            sk = s[:, known]
            if loss == "kd":
                p, log_q = torch.softmax(tk / t, -1), torch.log_softmax(sk / t, -1)
                hand[k] = t * t * (p * (p.log() - log_q)).sum(-1)
            else:
                hand[k] = ((sk - tk) ** 2).mean(-1)
        weights = torch.tensor([[1.0, 0.5, 0.0, 0.5], [0.0, 0.5, 1.0, 0.5]], dtype=torch.float64)
        expected = (weights * hand).sum(0).mean()
        torch.testing.assert_close(losses["kd"], expected, **REF64)
        torch.testing.assert_close(info["weights"], weights.mean(1), **REF64)


def test_a_teacher_never_votes_on_a_class_it_does_not_know():
    classes = [[0, 1, 2], [3, 4, 5]]
    ensemble = _partial_ensemble(classes)
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    for name in ("ca-mkd", "ce-filter", "ebkd", "correct-only", "best"):
        distiller = _distiller(ensemble, strategy=name)
        out = ensemble(x, torch.tensor([0, 4, 2, 5, -100, -100]))
        y = torch.tensor([0, 4, 2, 5, -100, -100])
        ce = distiller._strategy_ce(out, y, [0, 1])
        assert torch.isfinite(ce).all()
        sel = distiller.strategy.select(ce, out.logits, y)
        w = restrict_weights(sel.weights, ensemble.class_maps.votes(y))
        assert w[:, :4].tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]], name
        torch.testing.assert_close(w.sum(0), torch.ones(6))


def test_the_strategy_reads_a_teachers_ce_only_on_its_classes():
    classes = [[0, 1, 2], [3, 4, 5]]
    ensemble = _partial_ensemble(classes)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 4, -100])
    out = ensemble(x, y)
    for rule in ("entropy", "labeled"):
        ce = _distiller(ensemble, unlabeled_ce=rule)._strategy_ce(out, y, [0, 1])
        own = [ensemble.teachers[k](x) for k in range(2)]
        entropy = [-(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1) for z in own]
        real = [F.cross_entropy(own[0][:1], torch.tensor([1]), reduction="none"),
                F.cross_entropy(own[1][1:2], torch.tensor([1]), reduction="none")]
        torch.testing.assert_close(ce[0, 0], real[0][0])  # its CE on its own class
        torch.testing.assert_close(ce[1, 1], real[1][0])
        if rule == "entropy":
            torch.testing.assert_close(ce[0, 1:], entropy[0][1:])
            torch.testing.assert_close(ce[1, [0, 2]], entropy[1][[0, 2]])
        else:  # its mean over the samples it knows
            torch.testing.assert_close(ce[0, 1:], real[0].expand(2))
            torch.testing.assert_close(ce[1, [0, 2]], real[1].expand(2))


def test_restrict_weights_by_hand():
    w = torch.tensor([[0.2, 0.0, 0.5, 0.3], [0.8, 0.0, 0.5, 0.7]])
    votes = torch.tensor([[True, True, False, True], [False, True, False, True]])
    got = restrict_weights(w, votes)
    expected = torch.tensor([[1.0, 0.5, 0.0, 0.3], [0.0, 0.5, 0.0, 0.7]])
    torch.testing.assert_close(got, expected)


def test_concat_is_kd_against_the_teachers_logits_side_by_side():
    classes = [[0, 1, 2], [2, 3, 4, 5]]
    ensemble = _partial_ensemble(classes)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    y = torch.tensor([0, 2, 4, -100])
    distiller = _distiller(ensemble, label_merge="concat", alpha=0.0, partial_labels=True)
    distiller.double()  # float64: a check of the formula (REF64)
    x = x.double()
    _, losses, _ = distiller(x, y)
    a, b = ensemble.teachers[0](x), ensemble.teachers[1](x)
    merged = torch.cat([a[:, :2], (a[:, 2:] + b[:, :1]) / 2, b[:, 1:]], 1)
    s = distiller.student(x)
    p = torch.softmax(merged / 4, -1)
    hand = 16 * (p * (p.log() - torch.log_softmax(s / 4, -1))).sum(-1).mean()
    torch.testing.assert_close(losses["kd"], hand, **REF64)
    restricted = _distiller(ensemble, alpha=0.0, partial_labels=True).double()(x, y)[1]["kd"]
    assert not torch.allclose(restricted, hand)


def test_each_teacher_is_scored_on_the_test_images_of_its_own_classes():
    classes = [[0, 1, 2], [3, 4, 5]]
    ensemble = _partial_ensemble(classes)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 6, (8,), generator=g))
               for _ in range(3)]
    acc = ensemble.evaluate(batches)
    for k, known in enumerate(classes):
        hits = seen = 0
        for x, y in batches:
            mine = torch.isin(y, torch.tensor(known))
            pred = torch.tensor(known)[ensemble.teachers[k](x).argmax(-1)]
            hits += int((pred == y)[mine].sum())
            seen += int(mine.sum())
        assert acc[f"t{k}"] == pytest.approx(100.0 * hits / seen)


def test_what_partial_teachers_cannot_do_is_said_clearly():
    ensemble = _partial_ensemble([[0, 1, 2], [3, 4, 5]])
    cases = [({"logit_loss": "dkd"}, "uniform", "dkd splits the loss at the target class"),
             ({}, "mtkd-rl", "learns weights over teachers of one label space"),
             ({"label_merge": "concat"}, "ca-mkd", "use strategy uniform and gamma 0")]
    for kwargs, strategy, message in cases:
        with pytest.raises(ConfigError, match=message):
            _distiller(ensemble, strategy=strategy, **kwargs)
    with pytest.raises(ConfigError, match="some training images have no label"):
        _distiller(_partial_ensemble([None]), logit_loss="dkd", partial_labels=True)
    with pytest.raises(ConfigError, match=r"classes 7 lie outside the student's label space 0..5"):
        _partial_ensemble([[0, 7]])
    with pytest.raises(ModelError, match="t0 returns 3 logits but lists 2 classes"):
        TeacherEnsemble([Linear(3, 0)], names=["t0"], example_input=EXAMPLE, classes=[[0, 1]],
                        num_classes=6)


@pytest.mark.slow
def test_two_half_label_teachers_teach_every_class_without_a_label(tmp_path, capsys):
    for name, span, seed in (("lo", "0-4", "0"), ("hi", "5-9", "1")):
        assert main(["train-teacher", "--arch", "resnet8", "--classes", span, "--epochs", "6",
                     "--seed", seed, "--out", str(tmp_path / name), *DATA]) == 0
    teachers = ["--teachers-from", str(tmp_path / "lo"), str(tmp_path / "hi")]
    runs = {}
    for label, extra in (("none", ["--set", "data.labeled_fraction=0"]),
                         ("some", ["--set", "data.labeled_fraction=0.25"]),
                         ("concat", ["--set", "data.labeled_fraction=0",
                                     "--set", "loss.label_merge=concat"])):
        strategy = "uniform" if label == "concat" else "ca-mkd"
        out = tmp_path / label
        assert main(["distill", "--student", "resnet8", *teachers, "--strategy", strategy,
                     "--epochs", "6", "--out", str(out), *extra, *DATA]) == 0
        runs[label] = json.loads((out / "summary.json").read_text())
    # never shown a label, the student classifies all 10 classes far above chance (10%)
    assert runs["none"]["last_test_acc"] > 35, runs["none"]["last_test_acc"]
    assert runs["some"]["last_test_acc"] > 35 and runs["concat"]["last_test_acc"] > 20
    assert all(float(r["loss_ce"]) == 0.0 for r in read_metrics(tmp_path / "none"))
    # the teachers' accuracy: on the test images of their own classes, as in their own runs
    for name in ("lo", "hi"):
        own = json.loads((tmp_path / name / "summary.json").read_text())["last_test_acc"]
        assert runs["none"]["teacher_test_acc"][name] == pytest.approx(own)
    config = yaml.safe_load((tmp_path / "none" / "config.yaml").read_text())
    assert [t["classes"] for t in config["teachers"]] == [list(range(5)), list(range(5, 10))]
    # the teacher cache serves the same (masked) logits as the live teachers
    cached = tmp_path / "cached"
    assert main(["distill", "--student", "resnet8", *teachers, "--strategy", "ca-mkd",
                 "--epochs", "2", "--out", str(cached), "--set", "data.labeled_fraction=0",
                 "--set", f"runtime.teacher_cache={tmp_path / 'cache'}",
                 "--set", "runtime.teacher_cache_dtype=float32", *DATA]) == 0
    live = tmp_path / "live"
    assert main(["distill", "--student", "resnet8", *teachers, "--strategy", "ca-mkd",
                 "--epochs", "2", "--out", str(live), "--set", "data.labeled_fraction=0", *DATA]) == 0
    keys = ("loss_kd", "test_acc", "w_lo", "ce_lo")
    assert [[r[k] for k in keys] for r in read_metrics(cached)] == \
        [[r[k] for k in keys] for r in read_metrics(live)]
    # a class that nothing teaches is named
    assert main(["distill", "--student", "resnet8", "--teachers-from", str(tmp_path / "lo"),
                 "--epochs", "1", "--out", str(tmp_path / "x"), "--set", "data.labeled_fraction=0",
                 *DATA]) != 0
    err = capsys.readouterr().err
    assert "student classes 5-9 are in no teacher's classes" in err and "Traceback" not in err
    assert main(["distill", "--student", "resnet8", *teachers, "--epochs", "1", "--classes", "0-4",
                 "--out", str(tmp_path / "y"), *DATA]) != 0
    assert "use one or the other" in capsys.readouterr().err


@pytest.mark.slow
def test_a_suite_of_partial_teachers_runs_and_tables(tmp_path):
    suite = tiny_suite(
        "merge", 2,
        teachers={"lo": {"arch": "resnet8", "seed": 0, "classes": "0-1"},
                  "hi": {"arch": "resnet8", "seed": 1, "classes": [2, 3]}},
        teacher_sets={"halves": ["lo", "hi"]},
        pairs=[{"teachers": "halves", "students": ["resnet8"]}],
        labeled_fractions=[0.0, 1.0],
        strategies=["uniform", {"name": "uniform", "label": "concat",
                                "loss": {"label_merge": "concat"}}],
    )
    report = run_bench(parse_suite(suite), tmp_path)
    assert len(report.trained) == 2 + 2 + 3  # teachers; @labeled0 without the student alone
    table = (tmp_path / "table_last.md").read_text()
    assert "| synthetic@labeled0 | resnet8 ← lo+hi |" in table and "concat" in table
    # rows without a student alone are still compared, pairwise, against uniform
    paired = (tmp_path / "table_paired_vs_uniform_last.md").read_text()
    assert "| synthetic@labeled0 | resnet8 ← lo+hi |" in paired and "uniform (reference)" in paired
    teacher = yaml.safe_load((tmp_path / "teachers" / "lo" / "config.yaml").read_text())
    assert teacher["data"]["classes"] == [0, 1]
    with pytest.raises(ConfigError, match="teachers.lo.classes"):
        parse_suite({**suite, "teachers": {**suite["teachers"],
                                           "lo": {"arch": "resnet8", "classes": "1-0"}}})


def test_label_merge_suite_dry_runs(capsys):
    out = dry_run_suite("label-merge", capsys)
    assert "runs/halves@labeled0/resnet8x4/concat_s0" in out
    assert "runs/quarters@labeled1/resnet8x4/student_s0" in out
    assert "runs/halves@labeled0/resnet8x4/student_s0" not in out


def test_partial_teachers_beside_a_self_teacher():
    """Before its epoch the self-teacher (every class) takes no part; the partial teachers'
    rows are then a subset of the ensemble's, and their class maps follow them."""
    classes = [[0, 1, 2], [3, 4, 5], None]
    ensemble = _partial_ensemble(classes)
    distiller = MultiTeacherDistiller(Linear(6, seed=9), ensemble, create_strategy("ca-mkd"),
                                      example_input=EXAMPLE, self_teacher=2, self_from_epoch=2)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    y = torch.tensor([0, 4, -100, 5])
    distiller.set_epoch(1)
    _, losses, info = distiller(x, y)
    assert info["weights"][2] == 0 and torch.isfinite(losses["total"])
    # samples of classes 0, 4, 5: all weight on the teacher that knows them; the unlabelled
    # one is shared, so t0 holds 1/4 plus its share of it, t1 2/4 plus the rest
    w = info["weights"]
    torch.testing.assert_close(w[:2].sum(), torch.tensor(1.0))
    assert 0.25 <= float(w[0]) <= 0.5 and 0.5 <= float(w[1]) <= 0.75
    assert torch.isfinite(info["ce"]).all() and info["ce"].max() < 100
    distiller.set_epoch(2)
    _, losses, info = distiller(x, y)
    assert info["weights"][2] > 0 and torch.isfinite(losses["total"])
    assert torch.isfinite(info["ce"]).all() and info["ce"].max() < 100
