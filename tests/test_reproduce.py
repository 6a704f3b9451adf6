"""``multikd reproduce``: plan and estimate (--dry-run), the downloads it needs (against a
local HTTP server), the run, and the table with the published column."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from multikd.bench import reproduce
from multikd.cli import main
from multikd.data.cifar import CIFAR_LAYOUTS
from multikd.models import published
from test_download import SMALL, Server, _md5, _teacher_tar, cifar_tarball  # noqa: F401

SUITE = {
    "name": "tiny-paper",
    "data": {"dataset": "cifar100"},
    "recipe": {"optim": {"epochs": 1, "batch_size": 50}},
    "teachers": {"t": {"arch": "resnet8", "published": "resnet8_vanilla/ckpt_epoch_240.pth"}},
    "teacher_sets": {"one": ["t"]},
    "pairs": [{"teachers": "one", "students": ["resnet8"]}],
    "strategies": [{"name": "uniform", "label": "kd", "variants": ["logits"]}],
    "seeds": [0, 1],
    "targets": [  # made up: 0 (inside the wide interval of two 1-epoch runs) and 100 (above)
        {"teachers": "one", "student": "resnet8", "label": "kd", "top1": 0.0,
         "epoch": "best", "runs": 2, "source": "made-up paper, Table 1"},
        {"teachers": "one", "student": "resnet8", "label": "student", "top1": 100.0,
         "epoch": "best", "source": "made-up paper, Table 2"},
    ],
}


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "tiny-paper.yaml"
    path.write_text(yaml.safe_dump(SUITE, sort_keys=False))
    return path


@pytest.fixture
def server(monkeypatch, cifar_tarball):  # noqa: F811
    """CIFAR-100 look-alikes and mdistiller-layout teachers where the pinned URLs point."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    srv = Server()
    srv.files["/cifar-100-python.tar.gz"] = cifar_tarball
    monkeypatch.setitem(CIFAR_LAYOUTS, "cifar100", dataclasses.replace(
        CIFAR_LAYOUTS["cifar100"], url=srv.url("/cifar-100-python.tar.gz"),
        archive_md5=_md5(cifar_tarball)))
    srv.files["/cifar_teachers.tar"] = _teacher_tar({f"{t.arch}_vanilla": t.arch for t in SMALL})
    monkeypatch.setitem(published.TEACHER_RELEASES, "mdistiller", published.TeacherRelease(
        "mdistiller", srv.url("/cifar_teachers.tar"), "cifar_teachers.tar", SMALL))
    yield srv
    srv.close()


def test_names_are_the_suites_with_targets(tmp_path, capsys):
    assert set(reproduce.reproducible()) == {"feature-zoo", "single-teacher", "mtkd-rl"}
    assert main(["reproduce", "ca-mkd", "--out", str(tmp_path)]) == 2
    assert "feature-zoo, mtkd-rl, single-teacher" in capsys.readouterr().err
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({k: v for k, v in SUITE.items() if k != "targets"}))
    assert main(["reproduce", str(plain), "--out", str(tmp_path / "o")]) == 2
    assert "no 'targets:' section" in capsys.readouterr().err


def test_dry_run_prints_plan_downloads_and_estimate(server, suite_file, tmp_path, capsys):
    out, root = tmp_path / "out", tmp_path / "data"
    assert main(["reproduce", str(suite_file), "--data-root", str(root), "--out", str(out),
                 "--dry-run", "--probe-steps", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "suite tiny-paper: 4 student runs" in text
    assert f"cifar100: {server.url('/cifar-100-python.tar.gz')} -> {root}" in text
    assert "published teachers: " + server.url("/cifar_teachers.tar") in text
    assert "device-hours on cpu for 4 training jobs" in text  # the teacher is downloaded
    assert "resnet8 <- resnet8:" in text and "resnet8 <- (alone):" in text
    assert server.requests == [] and not out.exists() and not root.exists()


def test_missing_files_without_download_are_named(server, suite_file, tmp_path, capsys):
    assert main(["reproduce", str(suite_file), "--data-root", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "add --download" in err and "cifar100:" in err and "resnet8_vanilla" in err
    assert server.requests == []


def test_estimate_sums_epochs_times_images_over_rate(monkeypatch, suite_file):
    from multikd.bench.runner import make_plan

    monkeypatch.setattr(reproduce, "probe", lambda *a, **k: 1000.0)
    plan = make_plan(suite_file, "/tmp/unused", sets=["optim.epochs=3"])
    est = reproduce.estimate(plan, steps=1, device="cpu")
    assert est.jobs == 4 and est.hours == pytest.approx(4 * 3 * 50000 / 1000 / 3600)


@pytest.mark.slow
def test_reproduce_downloads_runs_and_tables_against_published(server, suite_file, tmp_path,
                                                               capsys):
    out, root = tmp_path / "out", tmp_path / "data"
    assert main(["reproduce", str(suite_file), "--data-root", str(root), "--out", str(out),
                 "--download", "--quiet", "--set", "runtime.device=cpu"]) == 0
    text = capsys.readouterr().out
    assert (root / "cifar-100-python" / "train").is_file()
    assert (out / reproduce.TEACHERS_FOLDER / "resnet8_vanilla" / "ckpt_epoch_240.pth").is_file()
    table = (out / reproduce.TABLE_FILE).read_text()
    assert table in text and "best-epoch test accuracy" in table
    header = next(line for line in table.splitlines() if line.startswith("| student"))
    assert header.endswith("| published |")
    assert "kd: published 0.00 best-epoch (2 runs; made-up paper, Table 1); ours best-epoch" in table
    assert "published inside our 95% CI" in table and "published above our 95% CI" in table
    # a second call finds everything in place: nothing downloaded, nothing trained again
    count = len(server.requests)
    assert main(["reproduce", str(suite_file), "--data-root", str(root), "--out", str(out),
                 "--quiet", "--set", "runtime.device=cpu"]) == 0
    assert len(server.requests) == count
