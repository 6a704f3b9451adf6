"""Run directories -> one pandas row per finished run (:func:`collect_runs`), and the
check that the runs of one table cell are one experiment.

A run directory is any folder under ``RUNS_DIR`` holding ``summary.json`` (see
:mod:`multikd.train.runio`). Only *finished* runs (``status == "finished"``) enter a table; any
other run is listed in a warning and in ``collect_runs(root).attrs["skipped"]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from multikd.errors import MultikdError
from multikd.plugins import changes as plugin_changes
from multikd.train.runio import CONFIG, METRICS, SUMMARY

log = logging.getLogger(__name__)

ROW_KEYS = ("dataset", "student", "teachers", "epochs")
"""What makes a table row: runs that agree on these are compared in one row."""


# The engine's summary keys, with the spellings of the run-directory format note as fallbacks.
_ALIASES = {
    "student": ("student_arch", "student"),
    "teacher_names": ("teacher_names", "teachers"),
    "features": ("features_used", "features"),
}


class ResultsError(MultikdError):
    """No usable runs, or a table that cannot be made from the runs found."""


def collect_runs(root: str | Path | list) -> pd.DataFrame:
    """One row per finished run under ``root`` (searched recursively), or under each of
    several folders (a sweep whose jobs wrote into different ``--out`` folders).

    Columns: every summary field, nested dicts flattened with dots (``versions.torch``),
    ``path`` (the run folder), normalized ``student``, ``teacher_names`` (tuple),
    ``features`` (bool) whichever spelling the summary used, and ``experiment`` (the run's
    config.yaml without what may differ between runs of one table cell, see
    :func:`experiment_text`; None without a config). Unfinished or unreadable runs are
    skipped with a warning and listed in ``df.attrs["skipped"]`` as ``(path, reason)``.
    A plugin file a run recorded that is missing or changed since (:mod:`multikd.plugins`)
    is a warning, listed in ``df.attrs["plugin_changes"]`` as ``(message, runs)``.
    """
    roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
    if not roots:
        raise ResultsError("no runs folder given")
    for folder in roots:
        if not folder.exists():
            raise ResultsError(
                f"runs folder {folder} does not exist; pass the folder the runs were written to"
            )
        if not folder.is_dir():
            raise ResultsError(
                f"{folder} is not a folder; pass the folder the runs were written to"
            )
    summaries = sorted({p.resolve(): p for r in roots for p in r.rglob(SUMMARY)}.values())
    records, skipped, changed = [], [], {}
    for summary_path in summaries:
        run = summary_path.parent
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            skipped.append((str(run), f"unreadable {SUMMARY}: {err}"))
            continue
        if not isinstance(summary, dict) or summary.get("status") != "finished":
            status = summary.get("status") if isinstance(summary, dict) else None
            skipped.append((str(run), f"status is {status!r}, not 'finished'"))
            continue
        for message in plugin_changes(summary.pop("plugins", None)):
            changed.setdefault(message, []).append(str(run))
        records.append(_flatten(summary) | _normalized(summary)
                       | {"path": str(run), "experiment": experiment_text(run)})
    for message, runs in changed.items():
        log.warning("%s: %d run(s) used the recorded version (e.g. %s); the table shows what "
                    "they computed, not what the file does now", message, len(runs), runs[0])
    for run, reason in skipped:
        log.warning("skipping run %s: %s", run, reason)
    if skipped:
        log.warning("%d unfinished or unreadable run(s) left out of the results", len(skipped))
    df = pd.DataFrame.from_records(records)
    if records:
        for key in ("kind", "dataset", "epochs", "seed"):
            if key not in df:
                df[key] = None
    df.attrs["skipped"] = skipped
    df.attrs["plugin_changes"] = [(message, runs) for message, runs in changed.items()]
    df.attrs["root"] = ", ".join(map(str, roots))
    df.attrs["roots"] = roots
    return df


# What may differ between the runs of one table cell: where they read, write and run, the
# seed, and the teachers' checkpoint paths (the same teachers in another --out folder).
_NOT_THE_EXPERIMENT = {
    "output": None, "plugins": None,  # a plugin's file: checked by its hash instead
    "runtime": ("seed", "device", "teacher_cache", "teacher_cache_budget"),
    "data": ("data_root", "workers", "pipeline"),
}


def experiment_text(run_dir: Path) -> str | None:
    """The run's config.yaml as canonical JSON without the keys of ``_NOT_THE_EXPERIMENT``
    (None when the run has no readable config.yaml)."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    params = (config.get("strategy") or {}).get("params") or {}
    if "seed" in params and params["seed"] == (config.get("runtime") or {}).get("seed"):
        params.pop("seed")  # a strategy seeded by its run (random): part of the seed
    for section, keys in _NOT_THE_EXPERIMENT.items():
        if keys is None:
            config.pop(section, None)
        elif isinstance(config.get(section), dict):
            for key in keys:
                config[section].pop(key, None)
    for teacher in config.get("teachers") or ():
        if isinstance(teacher, dict):
            teacher.pop("checkpoint", None)
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def _differences(a: str, b: str) -> list[str]:
    def flat(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): value}

    fa, fb = flat(json.loads(a)), flat(json.loads(b))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k)]


def check_one_experiment_per_cell(runs: pd.DataFrame) -> None:
    """Refuse a table cell (row, method) whose runs were made with different configs
    beyond seed and location: averaging them would mix two experiments under one label."""
    if "experiment" not in runs:
        return
    known = runs.dropna(subset=["experiment"])
    for key, cell in known.groupby([*ROW_KEYS, "method"], sort=True):
        kinds = cell.drop_duplicates("experiment")
        if len(kinds) < 2:
            continue
        a, b = kinds.iloc[0], kinds.iloc[1]
        diff = "; ".join(_differences(a["experiment"], b["experiment"])[:6])
        raise ResultsError(
            f"runs of different experiments under one label {key[-1]!r} in row "
            f"{'|'.join(map(str, key[:-1]))}: {a['path']} and {b['path']} differ in {diff}. "
            "Table them separately (pass only the folders of one experiment), or give one of "
            "them another strategy label"
        )


def _flatten(summary: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict) and key != "teacher_test_acc" and key != "strategy_params":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _normalized(summary: dict) -> dict:
    out = {}
    for name, keys in _ALIASES.items():
        out[name] = next((summary[k] for k in keys if summary.get(k) is not None), None)
    out["teacher_names"] = tuple(out["teacher_names"] or ())
    out["features"] = bool(out["features"])
    fraction = summary.get("labeled_fraction")
    if isinstance(fraction, (int, float)) and fraction < 1 and summary.get("dataset"):
        # another experiment: its own rows (and its own student-alone baseline)
        out["dataset"] = f"{summary['dataset']}@labeled{fraction:g}"
    return out


def read_metrics(run_path: str | Path) -> pd.DataFrame | None:
    """A run's ``metrics.csv`` (one row per epoch), or None with a warning if unreadable."""
    path = Path(run_path) / METRICS
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        log.warning("cannot read %s (%s); run left out of the plots", path, err)
        return None
