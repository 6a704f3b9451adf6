"""Reading a suite file into a :class:`~multikd.bench.suite_spec.Suite` (:func:`load_suite`,
:func:`parse_suite`): every key checked, each problem named with its place in the file and
close matches suggested. The format is documented in ``experiments/README.md``."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from multikd.bench.suite_spec import (
    NAME_RE,
    RESERVED_KEYS,
    SELF,
    STRATEGY_KEYS,
    SUITE_KEYS,
    TEACHER_KEYS,
    VARIANTS,
    StrategySpec,
    Suite,
    TeacherSpec,
    run_label,
)
from multikd.errors import ConfigError, MultikdError
from multikd.plugins import load_plugins
from multikd.results.targets import Target, parse_targets
from multikd.train.config import (
    RunConfig,
    load_yaml,
    set_value,
)


def preset_path(name: str) -> Path:
    """The packaged suite file of preset ``name`` (``multikd/presets/<name>.yaml``)."""
    folder = resources.files("multikd") / "presets"
    available = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
    if name not in available:
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available)}")
    return Path(str(folder / f"{name}.yaml"))


def source_text(source: str) -> str:
    """A suite's file as an output folder records it, with no absolute path of this machine
    where it can be avoided: ``multikd/presets/NAME.yaml (--preset NAME)`` for a packaged
    preset, a path under the working directory relative to it, any other path as given."""
    path = Path(source)
    presets = Path(str(resources.files("multikd") / "presets"))
    if path.suffix == ".yaml" and path.resolve().parent == presets.resolve():
        return f"multikd/presets/{path.name} (--preset {path.stem})"
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return source


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem is a ConfigError naming the key."""
    path = Path(path)
    return parse_suite(load_yaml(path), source=str(path))


def parse_suite(raw: dict, source: str = "suite") -> Suite:
    """Validate the mapping of a suite file (see ``experiments/README.md``)."""
    where = f"suite {source}"
    unknown = [k for k in raw if k not in SUITE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(SUITE_KEYS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        valid = "\n  ".join(f"{k}: {v}" for k, v in SUITE_KEYS.items())
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}.{hint} Valid keys:\n  {valid}"
        )
    plugins = _plugins(raw.get("plugins", []), source, where)
    for key in ("teachers", "teacher_sets", "pairs", "strategies"):
        if not raw.get(key):
            raise ConfigError(
                f"{where}: {key!r} is required and must not be empty ({SUITE_KEYS[key]})"
            )

    data = _mapping(raw.get("data", {}), f"{where}: 'data'")
    recipe = _recipe(raw.get("recipe", {}), f"{where}: 'recipe'")
    teacher_recipe = _recipe(raw.get("teacher_recipe", {}), f"{where}: 'teacher_recipe'")
    features = _mapping(raw.get("features", {}), f"{where}: 'features'")
    _check_config({"data": data}, f"{where}: 'data'")
    features = _student_features(features, f"{where}: 'features'")
    _check_config({"loss": {k: v for k, v in features.items() if k != "student_feature"}},
                  f"{where}: 'features'")

    teachers = _teachers(raw["teachers"], where)
    _check_teacher_domains(data, teachers, where)
    sets = _teacher_sets(raw["teacher_sets"], teachers, where)
    pairs = _pairs(raw["pairs"], sets, where)
    strategies = _strategies(raw["strategies"], sets, where)
    variants = raw.get("variants", list(VARIANTS))
    if not isinstance(variants, list) or not variants or any(v not in VARIANTS for v in variants):
        raise ConfigError(
            f"{where}: 'variants' must be a non-empty list from {list(VARIANTS)}, got {variants!r}"
        )
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ConfigError(
            f"{where}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}"
        )
    baseline = raw.get("baseline", True)
    if not isinstance(baseline, bool):
        raise ConfigError(f"{where}: 'baseline' must be true or false, got {baseline!r}")
    tolerance = raw.get("acc_tolerance", 1.0)
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or tolerance < 0:
        raise ConfigError(f"{where}: 'acc_tolerance' must be a number >= 0, got {tolerance!r}")
    threads = raw.get("cpu_threads")
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise ConfigError(f"{where}: 'cpu_threads' must be a positive integer, got {threads!r}")
    fractions = raw.get("labeled_fractions")
    if fractions is not None and (
        not isinstance(fractions, list) or not fractions
        or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1
               for f in fractions)
        or len(set(fractions)) != len(fractions)
    ):
        raise ConfigError(
            f"{where}: 'labeled_fractions' must be a non-empty list of distinct numbers in "
            f"[0, 1] (shares of training images that keep their label), got {fractions!r}"
        )
    targets = _targets(raw.get("targets"), sets, pairs, strategies, variants,
                       baseline, where)
    return Suite(
        plugins=plugins,
        targets=targets,
        labeled_fractions=None if fractions is None else [float(f) for f in fractions],
        name=str(raw.get("name", Path(source).stem)),
        cpu_threads=threads,
        source=source,
        description=str(raw.get("description", "")),
        data=data,
        recipe=recipe,
        teacher_recipe=teacher_recipe,
        features=features,
        teachers=teachers,
        teacher_sets=sets,
        pairs=pairs,
        strategies=strategies,
        variants=list(variants),
        baseline=baseline,
        seeds=list(seeds),
        acc_tolerance=float(tolerance),
    )


def _plugins(value, source: str, where: str) -> list[dict]:
    """Load the suite's ``plugins:`` files (relative to the suite file's folder)."""
    if not isinstance(value, list) or any(not isinstance(p, str) or not p for p in value):
        raise ConfigError(f"{where}: 'plugins' must be a list of .py file paths, got {value!r}")
    return load_plugins(value, base=Path(source).parent)


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (dicts under leaf keys kept)."""
    flat = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in ("data.synthetic", "strategy.params",
                                                     "loss.logit_params", "loss.feature_params"):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _check_config(sections: dict, where: str) -> None:
    """Apply ``sections`` to a default RunConfig so unknown keys and bad types fail now."""
    config = RunConfig()
    for key, value in _flatten(sections).items():
        try:
            set_value(config, key, value)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


def _recipe(value, where: str) -> dict:
    recipe = _mapping(value, where)
    for key in _flatten(recipe):
        if any(key == r or key.startswith(f"{r}.") for r in RESERVED_KEYS):
            raise ConfigError(
                f"{where}: {key!r} is set by the suite itself (teachers, students, strategies, "
                "seeds and run directories have their own keys); remove it from the recipe"
            )
        if key.startswith("data."):
            raise ConfigError(f"{where}: {key!r} belongs in the suite's top-level 'data' section")
    _check_config(recipe, where)
    return recipe


def _student_features(features: dict, where: str) -> dict:
    """``features.student_feature`` as one module name for every student, or a mapping
    ``{ARCH: module}`` for the students whose reference taps another module than the
    suite's stage (e.g. MTKD-RL's ShuffleNetV2: ``relu2``); keys become canonical names."""
    taps = features.get("student_feature")
    if not isinstance(taps, dict):
        return features
    if any(not isinstance(m, str) or not m for m in taps.values()):
        raise ConfigError(f"{where}: student_feature maps student architectures to module "
                          f"names (as in model.named_modules()), got {taps!r}")
    return {**features, "student_feature": {_arch(a, where): m for a, m in taps.items()}}


def _check_name(name, what: str, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: {what} {name!r} must be a non-empty name of letters, digits and _ . + - "
            "(it becomes a folder name)"
        )
    return name


def _arch(name, where: str) -> str:
    """Canonical zoo name (or ``timm:<name>`` as given); unknown names fail with the list."""
    from multikd.models import TIMM_PREFIX, canonical_name

    name = str(name)
    if name.startswith(TIMM_PREFIX):
        return name
    try:
        return canonical_name(name)
    except MultikdError as err:
        raise ConfigError(f"{where}: {err}") from None


def _teachers(raw, where: str) -> dict[str, TeacherSpec]:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: 'teachers' must map teacher ids to {{arch, seed, ...}}, got {raw!r}"
        )
    teachers = {}
    for tid, spec in raw.items():
        at = f"{where}: teachers.{tid}"
        _check_name(tid, "teacher id", where)
        spec = _mapping(spec, at)
        unknown = [k for k in spec if k not in TEACHER_KEYS]
        if unknown:
            raise ConfigError(f"{at}: unknown key(s) {unknown}; valid: {', '.join(TEACHER_KEYS)}")
        if "arch" not in spec:
            raise ConfigError(f"{at}: 'arch' is required (a zoo architecture or timm:<name>)")
        if spec["arch"] == SELF:
            extra = sorted(set(spec) - {"arch", "from_epoch"})
            epoch = spec.get("from_epoch")
            if extra or isinstance(epoch, bool) or not isinstance(epoch, int):
                raise ConfigError(
                    f"{at}: a self-teacher is {{arch: self, from_epoch: E}} (the student's "
                    f"snapshot from epoch E); got keys {sorted(spec)} and from_epoch {epoch!r}"
                )
            teachers[tid] = TeacherSpec(tid, SELF, from_epoch=epoch)
            continue
        if "from_epoch" in spec:
            raise ConfigError(f"{at}: 'from_epoch' belongs to a self-teacher (arch: self)")
        arch = _arch(spec["arch"], at)
        seed = spec.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{at}: 'seed' must be an integer, got {seed!r}")
        expected = spec.get("expected_acc")
        if expected is not None and (
            not isinstance(expected, (int, float)) or not 0 <= expected <= 100
        ):
            raise ConfigError(
                f"{at}: 'expected_acc' must be a test accuracy in percent, got {expected!r}"
            )
        published = spec.get("published")
        if published is not None and not isinstance(published, str):
            raise ConfigError(f"{at}: 'published' must be a file path relative to --teachers-dir")
        recipe = _recipe(spec.get("recipe", {}), f"{at}.recipe")
        synthetic = _mapping(spec.get("synthetic", {}), f"{at}.synthetic")
        classes = _classes(spec.get("classes"), f"{at}.classes")
        teachers[tid] = TeacherSpec(tid, arch, seed, published, expected, recipe, synthetic,
                                    classes=classes)
    return teachers


def _check_teacher_domains(suite_data: dict, teachers: dict[str, TeacherSpec], where: str):
    """A teacher's own ``synthetic`` options need synthetic data and keep the label space."""
    from multikd.data.synthetic import SYNTHETIC_DEFAULTS

    data_synth = suite_data.get("synthetic", {})
    for tid, spec in teachers.items():
        if not spec.synthetic:
            continue
        at = f"{where}: teachers.{tid}.synthetic"
        if suite_data.get("dataset", "synthetic") != "synthetic":
            raise ConfigError(f"{at}: a teacher's own synthetic options need the suite's "
                              "data.dataset to be synthetic")
        unknown = sorted(set(spec.synthetic) - set(SYNTHETIC_DEFAULTS))
        if unknown:
            raise ConfigError(f"{at}: unknown option(s) {unknown}; valid: "
                              f"{', '.join(SYNTHETIC_DEFAULTS)}")
        for key in ("num_classes", "num_superclasses"):
            if key in spec.synthetic and spec.synthetic[key] != data_synth.get(
                    key, SYNTHETIC_DEFAULTS[key]):
                raise ConfigError(f"{at}: {key} must equal the suite's (a teacher predicts "
                                  "the students' label space)")


def _classes(value, where: str) -> list[int] | None:
    """``0-49`` / ``"0-9,20-29"`` / a list of class indices (None: every class)."""
    from multikd.train.config import is_class_list, parse_classes

    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            return parse_classes(value)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    if not is_class_list(value):
        raise ConfigError(f"{where}: give distinct class indices as a list or ranges like "
                          f"0-49, got {value!r}")
    return value


def _teacher_sets(raw, teachers: dict, where: str) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'teacher_sets' must map set names to lists of teacher ids")
    sets = {}
    for name, ids in raw.items():
        _check_name(name, "teacher set", where)
        if not isinstance(ids, list) or not ids:
            raise ConfigError(
                f"{where}: teacher_sets.{name} must be a non-empty list of teacher ids"
            )
        missing = [t for t in ids if t not in teachers]
        if missing:
            raise ConfigError(
                f"{where}: teacher_sets.{name} names unknown teacher(s) {missing}; "
                f"defined in 'teachers': {', '.join(teachers)}"
            )
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{where}: teacher_sets.{name} lists a teacher twice: {ids}")
        sets[name] = list(ids)
    return sets


def _pairs(raw, sets: dict, where: str) -> list[tuple[str, list[str]]]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where}: 'pairs' must be a list of {{teachers: SET, students: [ARCH, ...]}}"
        )
    pairs, seen = [], set()
    for i, pair in enumerate(raw):
        at = f"{where}: pairs[{i}]"
        pair = _mapping(pair, at)
        if set(pair) != {"teachers", "students"}:
            raise ConfigError(
                f"{at} must have exactly the keys 'teachers' and 'students', got {sorted(pair)}"
            )
        if pair["teachers"] not in sets:
            raise ConfigError(
                f"{at}: unknown teacher set {pair['teachers']!r}; "
                f"defined in 'teacher_sets': {', '.join(sets)}"
            )
        students = pair["students"]
        if not isinstance(students, list) or not students:
            raise ConfigError(f"{at}: 'students' must be a non-empty list of architectures")
        names = []
        for arch in students:
            arch = _arch(arch, at)
            key = (pair["teachers"], arch)
            if key in seen:
                raise ConfigError(
                    f"{at}: student {arch} is distilled from set {pair['teachers']!r} twice"
                )
            seen.add(key)
            names.append(arch)
        pairs.append((pair["teachers"], names))
    return pairs


def _strategies(raw, sets: dict, where: str) -> list[StrategySpec]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where}: 'strategies' must be a list of names or {{name, params, label}}"
        )
    specs = []
    for i, entry in enumerate(raw):
        at = f"{where}: strategies[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        entry = _mapping(entry, at)
        unknown = [k for k in entry if k not in STRATEGY_KEYS]
        if unknown or "name" not in entry:
            raise ConfigError(
                f"{at} must be a name or a mapping with keys {', '.join(STRATEGY_KEYS)} "
                "('name' required)"
            )
        params = _mapping(entry.get("params", {}), f"{at}.params")
        label = _check_name(entry.get("label", entry["name"]), "strategy label", at)
        if label == "student":
            raise ConfigError(
                f"{at}: the label 'student' is reserved for the student-alone baseline"
            )
        loss = _mapping(entry.get("loss", {}), f"{at}.loss")
        _check_config({"loss": loss}, f"{at}.loss")
        variants = entry.get("variants")
        if variants is not None and (
            not isinstance(variants, list) or not variants
            or any(v not in VARIANTS for v in variants)
        ):
            raise ConfigError(
                f"{at}.variants must be a non-empty list from {list(VARIANTS)}, got {variants!r}"
            )
        only = entry.get("teacher_sets")
        if only is not None and (
            not isinstance(only, list) or not only or any(name not in sets for name in only)
        ):
            raise ConfigError(
                f"{at}.teacher_sets must be a non-empty list of set names from 'teacher_sets' "
                f"({', '.join(sets)}), got {only!r}"
            )
        specs.append(StrategySpec(label, str(entry["name"]), dict(params), dict(loss), variants,
                                  None if only is None else list(only)))
    labels = [s.label for s in specs]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ConfigError(
            f"{where}: strategy label(s) {dupes} appear twice; give each entry a distinct 'label'"
        )
    return specs


def _targets(raw, sets: dict, pairs: list, strategies: list[StrategySpec],
             variants: list[str], baseline: bool, where: str) -> list[Target]:
    """The ``targets:`` entries, each naming a teacher set, a student of that set's pairs and
    a column label that the suite runs (:mod:`multikd.results.targets`)."""
    targets = parse_targets(raw, where)
    for i, target in enumerate(targets):
        at = f"{where}: targets[{i}]"
        if target.teachers not in sets:
            raise ConfigError(f"{at}: unknown teacher set {target.teachers!r}; defined in "
                              f"'teacher_sets': {', '.join(sets)}")
        students = [s for name, group in pairs if name == target.teachers for s in group]
        if _arch(target.student, at) not in students:
            raise ConfigError(f"{at}: student {target.student!r} is not distilled from set "
                              f"{target.teachers!r}; its students: {', '.join(students)}")
        labels = (["student"] if baseline else []) + [
            run_label(s, v) for s in strategies if s.runs_on(target.teachers)
            for v in (s.variants or variants)]
        if target.label not in labels:
            raise ConfigError(f"{at}: label {target.label!r} is not a column of this suite "
                              f"for set {target.teachers!r}; its labels there: "
                              f"{', '.join(labels)}")
    return targets


def check_strategies(suite: Suite) -> None:
    """Build every strategy once so unknown names and bad parameters fail before training."""
    from multikd.method.strategies import create_strategy

    for spec in suite.strategies:
        try:
            create_strategy(spec.name, **spec.params)
        except MultikdError as err:
            raise ConfigError(f"suite {suite.source}: strategy {spec.label!r}: {err}") from None
