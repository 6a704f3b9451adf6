"""The config hash: 12 hex digits naming the experiment a config describes, the same for
runs made before later keys existed (:data:`LEGACY_VALUES`)."""

from __future__ import annotations

import hashlib
import json

from multikd.train.config.schema import REFERENCE, RunConfig

LEGACY_VALUES = {
    ("data", "drop_last"): (False,),
    ("data", "labeled_fraction"): (1.0,),
    ("data", "classes"): (None,),
    ("data", "unlabeled_dir"): ("",),
    ("loss", "unlabeled_ce"): ("entropy",),
    ("loss", "label_merge"): ("restricted",),
    ("loss", "logit_params"): ({},),
    ("loss", "logit_standardize"): (False,),
    ("loss", "feature_loss"): ("mse",),
    ("loss", "feature_params"): ({},),
    ("loss", "teacher_reduction"): ("sum", REFERENCE),
    ("loss", "feature_stage"): (-1, None),
    ("loss", "taps"): ("stages",),
    ("loss", "adapter"): ("conv1x1", REFERENCE),
    ("loss", "feature_start_epoch"): (1, None),
    ("loss", "feature_grad"): (True,),
}
"""Keys added after runs were first made, with the values that reproduce those runs'
numbers: left out of the hash there, so such runs keep their hashes."""


def config_hash(config: RunConfig) -> str:
    """12 hex digits identifying the experiment: every key except where the run reads,
    writes and runs (the ``output`` section, ``data.data_root``, ``data.workers``,
    ``data.pipeline``, ``runtime.device``, the teacher cache's folder and budget), so a run
    resumed on another device, pipeline or cache folder keeps its hash.

    The performance switches added later count only when they can change the numbers and
    are not at their defaults (``runtime.teacher_cache_dtype`` while a cache is on), so runs
    made before they existed keep their hashes (the removed ``runtime.batched_teachers``
    counted when true: such a run's hash now leaves it out, see :data:`REMOVED_KEYS`). The
    ``plugins`` records are left out too: a plugin's name in the strategy or
    loss keys counts, and its file is checked against its recorded SHA-256 instead
    (:func:`multikd.plugins.changes`)."""
    data = config.to_dict()
    data.pop("output")
    data.pop("plugins")
    skipped = (("data", "data_root"), ("data", "workers"), ("data", "pipeline"),
               ("runtime", "device"),
               ("runtime", "teacher_cache"), ("runtime", "teacher_cache_budget"))
    runtime = data["runtime"]
    if not runtime["teacher_cache"]:
        runtime.pop("teacher_cache_dtype")
    for section, key in skipped:
        data[section].pop(key)
    for (section, key), legacy in LEGACY_VALUES.items():
        if data[section].get(key, legacy[0]) in legacy:
            data[section].pop(key, None)
    for teacher in data["teachers"]:  # added later too: only the teachers they describe
        for key in ("self_from_epoch", "classes"):
            if teacher.get(key) is None:
                teacher.pop(key, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
