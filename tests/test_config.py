"""Run configuration: recipe defaults, typed overrides, clear errors, YAML round trip, hash."""

import dataclasses

import pytest
import yaml

from multikd.train.config import (
    RunConfig,
    TeacherConfig,
    build_config,
    config_hash,
    default_lr,
    default_milestones,
    load_config,
    parse_teacher,
    resolve,
    set_value,
    to_yaml,
)
from multikd.errors import ConfigError, ModelError


def test_defaults_are_the_cifar_recipe():
    cfg = resolve(RunConfig())
    o = cfg.optim
    assert (o.lr, o.momentum, o.weight_decay, o.batch_size, o.epochs) == (0.05, 0.9, 5e-4, 64, 240)
    assert (o.schedule, o.milestones, o.lr_decay, o.nesterov) == ("multistep", [150, 180, 210], 0.1, False)
    assert cfg.loss.temperature == 4.0
    assert cfg.data.dataset == "synthetic"
    assert cfg.runtime.device == "auto" and not cfg.runtime.amp and not cfg.runtime.compile


def test_small_students_get_lr_001_explicitly_unless_lr_is_given():
    assert [default_lr(a) for a in ("MobileNetV2", "ShuffleV1", "ShuffleV2")] == [0.01] * 3
    assert default_lr("resnet8x4") == 0.05 and default_lr("timm:resnet18") == 0.05
    given = build_config(sets=["optim.lr=0.2"])
    assert resolve(given).optim.lr == 0.2
    assert "lr: 0.05" in to_yaml(resolve(RunConfig()))  # the resolved file says which lr was used


def test_milestones_scale_with_the_run_length():
    assert default_milestones(240) == [150, 180, 210]
    assert default_milestones(40) == [25, 30, 35]
    assert resolve(build_config(sets=["optim.epochs=40"])).optim.milestones == [25, 30, 35]
    explicit = build_config(sets=["optim.epochs=40", "optim.milestones=[10, 20]"])
    assert resolve(explicit).optim.milestones == [10, 20]


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("optim.lr=1e-3", "optim.lr", 0.001),  # YAML 1.1 would read this as a string
        ("optim.lr=2", "optim.lr", 2.0),
        ("optim.epochs=7", "optim.epochs", 7),
        ("optim.nesterov=true", "optim.nesterov", True),
        ("optim.milestones=[3, 5]", "optim.milestones", [3, 5]),
        ("data.synthetic={num_classes: 5, train_size: 64}", "data.synthetic", {"num_classes": 5, "train_size": 64}),
        ("data.data_root=123", "data.data_root", "123"),  # str fields take the text verbatim
        ("data.data_root=null", "data.data_root", None),
        ("model.checkpoint=a b.pt", "model.checkpoint", "a b.pt"),
        ("kind=distill", "kind", "distill"),
        ("loss.teacher_features=[layer3, layer3]", "loss.teacher_features", ["layer3", "layer3"]),
    ],
)
def test_set_overrides_are_typed_by_the_field(text, key, expected):
    cfg = build_config(sets=[text])
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_teachers_list_can_be_set_as_yaml():
    cfg = build_config(sets=["teachers=[{arch: resnet8, checkpoint: a.pt}, {arch: resnet14}]"])
    assert cfg.teachers == [TeacherConfig("resnet8", "a.pt"), TeacherConfig("resnet14")]


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("optim.lrr=0.1", ["'optim.lrr'", "Did you mean lr?", "Valid keys in section 'optim': lr,"]),
        ("optimm.lr=0.1", ["'optimm'", "Did you mean optim?"]),
        ("epochs=3", ["Did you mean optim.epochs"]),
        ("optim.lr=fast", ["optim.lr expects a float", "'fast'"]),
        ("optim.epochs=2.5", ["optim.epochs expects an int", "2.5"]),
        ("optim.nesterov=1", ["optim.nesterov expects a bool"]),
        ("optim.milestones=[a]", ["optim.milestones[0] expects an int"]),
        ("optim.schedule=linear", ["optim.schedule must be one of multistep, cosine", "'linear'"]),
        ("loss.logit_loss=l1", ["loss.logit_loss must be one of kd, mse"]),
        ("optim=3", ["'optim' is a section", "optim.lr"]),
        ("optim.lr.x=3", ["'optim.lr' is a value, not a section"]),
        ("no equals sign", ["must look like section.key=value"]),
        ("teachers=[{arch: resnet8, ckpt: a}]", ["'teachers[0].ckpt'", "checkpoint"]),
    ],
)
def test_bad_overrides_say_what_is_valid(text, fragments):
    with pytest.raises(ConfigError) as err:
        build_config(sets=[text])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_close_matches_are_listed_first():
    with pytest.raises(ConfigError) as err:
        build_config(sets=["optim.wieght_decay=0"])
    valid = str(err.value).split("Valid keys in section 'optim': ")[1].split(", ")
    assert valid[0] == "weight_decay" and set(valid) == {f.name for f in dataclasses.fields(type(RunConfig().optim))}


def test_yaml_file_then_flags_then_sets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {epochs: 10, lr: 0.1}\nruntime: {seed: 3}\n")
    cfg = build_config(path, sets=["optim.lr=0.2"], values={"optim.epochs": 4, "runtime.seed": 5})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.runtime.seed) == (4, 0.2, 5)
    assert cfg.optim.batch_size == 64  # untouched keys keep their defaults


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("optim: {lr: [1]}\n", "optim.lr expects a float"),
        ("optim: {lr: 0.1, epoks: 3}\n", "'optim.epoks'"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("optim: {lr: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_files(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def _distill_config() -> RunConfig:
    return build_config(
        values={
            "kind": "distill",
            "model.arch": "resnet8",
            "teachers": [TeacherConfig("resnet14", "a.pt"), TeacherConfig("resnet14", "b.pt"),
                         TeacherConfig("resnet20", "c.pt", name="big")],
        },
        sets=["strategy.params={margin: 0.5, granularity: sample}", "loss.gamma=2"],
    )


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = resolve(_distill_config())
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert resolve(again) == cfg  # resolving is idempotent
    assert config_hash(again) == config_hash(cfg)
    assert [t.name for t in cfg.teachers] == ["resnet14", "resnet14_2", "big"]
    assert yaml.safe_load(path.read_text())["optim"]["lr"] == 0.05


def test_hash_ignores_where_the_run_happens_and_tracks_everything_else():
    base = resolve(_distill_config())
    h = config_hash(base)
    assert len(h) == 12 and config_hash(resolve(_distill_config())) == h
    elsewhere = resolve(_distill_config())
    elsewhere.output.run_dir, elsewhere.output.quiet = "elsewhere", True
    elsewhere.data.data_root, elsewhere.data.workers, elsewhere.runtime.device = "/d", 4, "cuda"
    assert config_hash(elsewhere) == h
    for key, value in [("runtime.seed", 1), ("optim.lr", 0.1), ("loss.gamma", 0.0),
                       ("strategy.params", {"margin": 0.4, "granularity": "sample"})]:
        changed = resolve(_distill_config())
        set_value(changed, key, value)
        assert config_hash(changed) != h, key


def test_removed_runtime_batched_teachers_still_loads_with_a_note(tmp_path, caplog, monkeypatch):
    """runtime.batched_teachers (the vmapped teacher pass, removed) loads from old files and
    --set with a one-line note, and the hash of a run that had it at its default is unchanged
    (304deca100b3, from before the removal)."""
    import logging

    from multikd.train.config import legacy

    monkeypatch.setattr(legacy, "_noted", set())
    cfg = resolve(RunConfig(kind="distill", teachers=[TeacherConfig(arch="resnet8")]))
    assert config_hash(cfg) == "304deca100b3"
    data = cfg.to_dict()
    data["runtime"]["batched_teachers"] = True
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.INFO, logger="multikd.train.config"):
        old = load_config(path)
        set_value(old, "runtime.batched_teachers", "false", from_text=True)
        build_config(path, sets=["runtime.batched_teachers=true"])
    assert old == cfg and config_hash(old) == config_hash(cfg)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "runtime.batched_teachers=True is ignored" in notes[0]


def test_default_run_dir_names_the_run():
    assert resolve(RunConfig()).output.run_dir == "runs/teacher_resnet8x4_s0"
    assert resolve(_distill_config()).output.run_dir == "runs/distill_resnet8_ce-filter_s0"


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"kind": "distill"}, "distill needs at least one teacher"),
        ({"teachers": [TeacherConfig("resnet8")]}, "teachers are only used by distill"),
        ({"optim.batch_size": 0}, "optim.batch_size must be positive"),
        ({"optim.lr": -0.1}, "optim.lr must be positive"),
        ({"optim.warmup_epochs": 5, "optim.epochs": 5}, "warmup_epochs (5) must be smaller"),
        ({"data.val_size": -1}, "data.val_size must be >= 0"),
        ({"kind": "distill", "teachers": [TeacherConfig("resnet8")],
          "loss.teacher_features": ["a", "b"]}, "names 2 modules for 1 teachers"),
    ],
)
def test_resolve_rejects_inconsistent_configs(values, fragment):
    with pytest.raises(ConfigError) as err:
        resolve(build_config(values=values))
    assert fragment in str(err.value)


def test_unknown_architecture_is_a_model_error():
    with pytest.raises(ModelError, match="unknown model 'resnet9'"):
        resolve(build_config(values={"model.arch": "resnet9"}))


def test_parse_teacher():
    assert parse_teacher("resnet56=runs/t/checkpoint.pt") == TeacherConfig("resnet56", "runs/t/checkpoint.pt")
    assert parse_teacher("wrn_40_2") == TeacherConfig("wrn_40_2", None)
    for bad in ("=x.pt", "resnet8=", ""):
        with pytest.raises(ConfigError, match="ARCH or ARCH=CHECKPOINT"):
            parse_teacher(bad)
