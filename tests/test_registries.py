"""Every extension point is a registry: strategies, logit losses, feature losses, adapters.

Each lists its entries with a one-line description and its parameters; an unknown name or
a name registered twice is a clear error; an entry registered here (a test's own logit
loss, feature loss, adapter or strategy) is accepted by the configuration and used by the
distiller exactly as a built-in; ``multikd list`` prints them all. Strategies live one per
module, each importing only the base (the import-cycle test of the whole package, function
-level imports included, is in tests/test_layout.py).
"""

from __future__ import annotations

import pytest
import torch
from test_layout import _import_graph
from torch import nn

from multikd.cli import main
from multikd.errors import ConfigError, ModelError, StrategyError
from multikd.method.adapters import ADAPTER_REGISTRY, FeatureAdapter, build_adapter, register_adapter
from multikd.method.distiller import MultiTeacherDistiller
from multikd.method.ensemble import TeacherEnsemble
from multikd.method.loss_spec import LossSpec
from multikd.method.feature_losses import FEATURE_LOSS_REGISTRY, hint_mse, register_feature_loss
from multikd.method.logit_losses import (
    LOGIT_LOSS_REGISTRY,
    kd_per_teacher,
    logit_loss_per_teacher,
    register_logit_loss,
)
from multikd.method.registry import REQUIRED
from multikd.method.strategies import (
    STRATEGIES,
    Strategy,
    create_strategy,
    list_strategies,
    register_strategy,
    uniform_selection,
)
from multikd.train.config import build_config

REGISTRIES = {  # registry -> (its error type, its built-in names in registration order)
    "strategies": (STRATEGIES, StrategyError, (
        "uniform", "fitnet-mkd", "ce-filter", "ca-mkd", "ebkd", "best", "correct-only",
        "random", "fixed", "aekd", "mtkd-rl", "mmkd",
    )),
    "logit-losses": (LOGIT_LOSS_REGISTRY, ConfigError, ("kd", "mse", "dkd", "dist")),
    "feature-losses": (FEATURE_LOSS_REGISTRY, ConfigError, (
        "mse", "at", "nst", "pkt", "rkd", "sp", "reviewkd", "crd", "ofd", "vid",
    )),
    "adapters": (ADAPTER_REGISTRY, ModelError, ("conv1x1", "embed", "convreg", "mmkd")),
}


# --------------------------------------------------------------------------- the tables
@pytest.mark.parametrize("section", sorted(REGISTRIES))
def test_each_registry_lists_its_entries_with_a_description_and_parameters(section):
    registry, _, names = REGISTRIES[section]
    assert registry.names() == names and list(registry) == list(names) and len(registry) == len(names)
    for entry in registry.entries():
        assert entry.description and "\n" not in entry.description, entry.name
        assert registry[entry.name] is entry.target and registry.entry(entry.name) is entry


def test_entries_carry_their_parameters_with_defaults():
    assert dict(STRATEGIES.entry("ce-filter").params) == {
        "margin": None, "keep": None, "tau": 1.0, "granularity": "batch"}
    assert dict(STRATEGIES.entry("aekd").params) == {"C": 0.6, "normalize": False}
    assert dict(STRATEGIES.entry("ca-mkd").params) == {}
    assert dict(LOGIT_LOSS_REGISTRY.entry("dkd").params) == {"alpha": 1.0, "beta": 8.0, "warmup": 20}
    assert dict(LOGIT_LOSS_REGISTRY.entry("dist").params) == {"beta": 1.0, "gamma": 1.0, "tau": 4.0}
    assert LOGIT_LOSS_REGISTRY.entry("dkd").info["needs_labels"]
    assert not LOGIT_LOSS_REGISTRY.entry("kd").info["needs_labels"]
    assert dict(ADAPTER_REGISTRY.entry("conv1x1").params) == {"relu": False}
    assert dict(ADAPTER_REGISTRY.entry("embed").params) == {}
    assert FEATURE_LOSS_REGISTRY["mse"] is hint_mse and dict(FEATURE_LOSS_REGISTRY.entry("mse").params) == {}
    assert STRATEGIES.entry("CE_Filter").name == "ce-filter"  # strategies: case and _ / - free


@pytest.mark.parametrize("section", sorted(REGISTRIES))
def test_an_unknown_name_is_the_registrys_error_listing_the_valid_ones(section):
    registry, error, names = REGISTRIES[section]
    with pytest.raises(error) as err:
        registry.entry("nosuch")
    assert "'nosuch'" in str(err.value) and ", ".join(names) in str(err.value)


def test_unknown_parameters_list_the_accepted_ones_in_every_registry():
    with pytest.raises(StrategyError, match="unknown parameter.*tau; accepted parameters: C, normalize"):
        create_strategy("aekd", tau=1.0)
    with pytest.raises(ConfigError, match="unknown parameter.*scale; it takes no parameters"):
        FEATURE_LOSS_REGISTRY.check_params("mse", {"scale": 2.0})
    s, t, y = torch.zeros(2, 3), torch.zeros(1, 2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ConfigError, match="accepted parameters: beta, gamma, tau"):
        logit_loss_per_teacher("dist", s, t, y, 4.0, {"alpha": 1.0})


@pytest.mark.parametrize("section", sorted(REGISTRIES))
def test_registering_a_name_twice_is_a_clear_error_that_changes_nothing(section):
    registry, error, names = REGISTRIES[section]
    before = registry.entries()
    with pytest.raises(error, match=f"{registry.kind} '{names[0]}' is registered twice: "
                                    f".*holds it, .*another name"):
        registry.add(names[0], object(), "an impostor")
    assert registry.entries() == before and registry.entry(names[0]).description != "an impostor"


def test_the_decorators_refuse_a_taken_name_too():
    with pytest.raises(StrategyError, match="'uniform' is registered twice"):
        @register_strategy("uniform")
        class Again(Strategy):
            pass
    with pytest.raises(ConfigError, match="'kd' is registered twice"):
        register_logit_loss("kd")(kd_per_teacher)
    with pytest.raises(ModelError, match="'embed' is registered twice"):
        register_adapter("embed")(FeatureAdapter)
    with pytest.raises(StrategyError, match="canonical form .*'my-way'"):
        STRATEGIES.add("My_Way", Strategy)


# --------------------------------------------------------------------------- new entries
CLASSES = 5


class Tiny(nn.Module):
    """conv stem (C x 32 x 32) -> strided stage (C x 16 x 16) -> pool -> fc."""

    def __init__(self, channels=4):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, CLASSES)
        self.feature_names = ["stem", "stage"]

    def forward(self, x):
        return self.fc(self.pool(self.stage(self.stem(x))).flatten(1))


def _distill(**kw):
    """Losses of one step of a fixed student and two fixed teachers on a fixed batch."""
    torch.manual_seed(0)
    ensemble = TeacherEnsemble([Tiny(4), Tiny(6)])
    distiller = MultiTeacherDistiller(Tiny(3), ensemble, create_strategy("ce-filter"),
                                      LossSpec(**kw)).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, CLASSES, (6,), generator=g)
    return distiller(x, y)[1]


@pytest.fixture
def scaled_kd():
    """A logit loss of the test's own: Hinton KD times ``scale`` (0.5 unless given)."""
    with LOGIT_LOSS_REGISTRY.restoring():
        @register_logit_loss("scaled-kd", "KD times a factor (a test's loss)")
        def scaled(student, teachers, labels, temperature, scale=0.5):
            return scale * kd_per_teacher(student, teachers, labels, temperature)

        yield scaled
    assert "scaled-kd" not in LOGIT_LOSS_REGISTRY


def test_a_registered_logit_loss_is_accepted_by_the_config(scaled_kd):
    cfg = build_config(sets=["loss.logit_loss=scaled-kd", "loss.logit_params={scale: 0.25}"])
    assert cfg.loss.logit_loss == "scaled-kd" and cfg.loss.logit_params == {"scale": 0.25}
    with pytest.raises(ConfigError, match="loss.logit_loss must be one of kd, mse, dkd, dist, "
                                          "scaled-kd; got 'scaled_kd'"):
        build_config(sets=["loss.logit_loss=scaled_kd"])


def test_without_it_the_config_refuses_the_name():
    with pytest.raises(ConfigError, match="loss.logit_loss must be one of kd, mse, dkd, dist;"):
        build_config(sets=["loss.logit_loss=scaled-kd"])


def test_a_registered_logit_loss_is_used_by_the_distiller_with_its_parameters(scaled_kd):
    kd = _distill()["kd"]
    assert torch.equal(_distill(logit_loss="scaled-kd")["kd"], 0.5 * kd)  # its default
    assert torch.equal(_distill(logit_loss="scaled-kd", logit_params={"scale": 0.25})["kd"],
                       0.25 * kd)
    with pytest.raises(ConfigError, match="'scaled-kd' got unknown parameter.*tau; accepted "
                                          "parameters: scale"):
        _distill(logit_loss="scaled-kd", logit_params={"tau": 2.0})
    standardized = _distill(logit_standardize=True)["kd"]  # the wrapper wraps any loss
    assert torch.equal(_distill(logit_loss="scaled-kd", logit_standardize=True)["kd"],
                       0.5 * standardized)


def test_a_registered_feature_loss_is_used_by_the_distiller():
    with FEATURE_LOSS_REGISTRY.restoring():
        @register_feature_loss("scaled-mse")
        def scaled_mse(student, teacher, scale=2.0):
            """FitNets' hint times a factor (a test's loss). More text."""
            return scale * hint_mse(student, teacher)

        entry = FEATURE_LOSS_REGISTRY.entry("scaled-mse")
        assert entry.description == "FitNets' hint times a factor (a test's loss)."
        assert dict(entry.params) == {"scale": 2.0}
        cfg = build_config(sets=["loss.feature_loss=scaled-mse", "loss.feature_params={scale: 3}"])
        assert cfg.loss.feature_loss == "scaled-mse"
        feat = _distill(gamma=1.0)["feat"]
        assert torch.equal(_distill(gamma=1.0, feature_loss="scaled-mse")["feat"], 2.0 * feat)
        assert torch.equal(_distill(gamma=1.0, feature_loss="scaled-mse",
                                    feature_params={"scale": 0.5})["feat"], 0.5 * feat)
    with pytest.raises(ConfigError, match="feature_loss must be one of mse, at.*; got 'scaled-mse'"):
        _distill(gamma=1.0, feature_loss="scaled-mse")


def test_a_feature_loss_sees_one_or_several_stages_per_teacher():
    seen = []
    with FEATURE_LOSS_REGISTRY.restoring():
        @register_feature_loss("stages", "records what it is given")
        def stages(student, teacher):
            seen.append(([tuple(s.shape) for s in student], [tuple(t.shape) for t in teacher]))
            return hint_mse(student, teacher)

        from multikd.method.feature_losses import feature_loss_per_teacher

        a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 5)
        one = feature_loss_per_teacher([a], [a + 1], "stages")  # one map per teacher
        two = feature_loss_per_teacher([[a, b]], [[a + 1, b + 2]], "stages")  # two stages
    assert seen == [([(2, 3, 4, 4)], [(2, 3, 4, 4)]), ([(2, 3, 4, 4), (2, 5)], [(2, 3, 4, 4), (2, 5)])]
    assert one.shape == (1, 2) and torch.allclose(two, one + 4.0)


def test_a_registered_adapter_and_strategy_work_as_the_built_ins():
    with ADAPTER_REGISTRY.restoring(), STRATEGIES.restoring():
        @register_adapter("conv1x1-relu", "conv1x1 that always ends in ReLU (a test's adapter)")
        class AlwaysRelu(FeatureAdapter):
            def __init__(self, in_shape, out_shape):
                super().__init__(in_shape, out_shape, relu=True)

        @register_strategy("first")
        class First(Strategy):
            """All weight on the first teacher (a test's strategy). More text."""

            def _select(self, ce, logits, labels):
                return uniform_selection(ce[:1])

        adapter = build_adapter((3, 8, 8), (5, 4, 4), kind="conv1x1-relu")
        assert type(adapter) is AlwaysRelu and adapter.kind == "conv1x1-relu" and adapter.relu
        assert type(create_strategy("First")) is First and First.name == "first"
        assert "first" in list_strategies()
        assert STRATEGIES.entry("first").description == "All weight on the first teacher (a test's strategy)."
        assert build_config(sets=["loss.adapter=conv1x1-relu"]).loss.adapter == "conv1x1-relu"
    assert "first" not in STRATEGIES and "conv1x1-relu" not in ADAPTER_REGISTRY


def test_a_required_parameter_is_shown_as_required():
    with STRATEGIES.restoring():
        @register_strategy("needs-k", "a test's strategy with a required parameter")
        class NeedsK(Strategy):
            def __init__(self, k, tau=1.0):
                self.k, self.tau = k, tau

        entry = STRATEGIES.entry("needs-k")
        assert entry.params["k"] is REQUIRED and entry.params_text() == "k (required), tau=1.0"


# --------------------------------------------------------------------------- multikd list
def test_multikd_list_prints_every_registry_with_descriptions_and_parameters(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    titles = ["strategies (", "logit losses (", "feature losses (", "adapters ("]
    assert [line.split("(")[0] + "(" for line in out.splitlines() if line and line[0] != " "] \
        == titles
    for registry, _, _ in REGISTRIES.values():
        for entry in registry.entries():
            assert f"  {entry.name}  " in out and entry.description in out, entry.name
    for params in ("margin=None, keep=None, tau=1.0, granularity='batch'", "C=0.6, normalize=False",
                   "alpha=1.0, beta=8.0, warmup=20", "beta=1.0, gamma=1.0, tau=4.0", "relu=False"):
        assert params in out
    lines = out.splitlines()
    uniform = next(i for i, line in enumerate(lines) if line.startswith("  uniform "))
    assert lines[uniform + 1].strip() == "(no parameters)"


def test_multikd_list_one_section(capsys):
    assert main(["list", "logit-losses"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("logit losses (") and "dkd" in out and "ce-filter" not in out
    with pytest.raises(SystemExit):
        main(["list", "losses"])
    assert "invalid choice: 'losses'" in capsys.readouterr().err


# --------------------------------------------------------------------------- import graph
def test_the_strategy_modules_import_only_the_base():
    """One module per strategy, each importing the package's base (and the base of learned
    strategies), never another strategy or the package itself; the package has no import
    cycle (tests/test_layout.py checks every part)."""
    graph = _import_graph()
    package = "multikd.method.strategies"
    bases = {f"{package}.base", f"{package}.learned"}
    modules = [m for m in graph if m.startswith(f"{package}.") and m not in bases]
    assert len(modules) == len(STRATEGIES)
    for module in modules:
        own = {m for m in graph[module] if m == package or m.startswith(f"{package}.")}
        assert own <= bases, (module, own)
    assert set(graph[package]) >= set(modules) | bases  # the package imports every one
