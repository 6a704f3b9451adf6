"""Teacher-selection and weighting strategies: which teachers guide the student, how much.

One module per strategy, mdistiller-style, each registering its class with
``@register_strategy`` (timm-style); :mod:`.base` holds :class:`Strategy`,
:class:`Selection`, :class:`StepContext`, the registry (:data:`STRATEGIES`,
:func:`create_strategy`) and the parameter checks, :mod:`.learned` the base of strategies
with networks of their own. This package imports the base and then every strategy module,
so importing it registers them all; a strategy module imports only the base (and
:mod:`.learned`), never another strategy or this package. A new strategy is one new module
here and one line below.
"""

from multikd.method.strategies.base import (
    GRANULARITIES,
    REFERENCE_LOSS_DEFAULTS,
    STRATEGIES,
    Selection,
    StepContext,
    Strategy,
    best_mask,
    canonical_name,
    check_bool,
    check_choice,
    check_finite,
    check_float,
    check_int,
    check_positive_float,
    check_positive_int,
    create_strategy,
    list_strategies,
    reference_loss,
    register_strategy,
    score_of,
    uniform_selection,
)
from multikd.method.strategies.learned import (
    AfterStep,
    LearnedStrategy,
    StepRecord,
    StrategySpec,
)
from multikd.method.strategies.uniform import Uniform
from multikd.method.strategies.fitnet_mkd import FitNetMKD
from multikd.method.strategies.ce_filter import CEFilter
from multikd.method.strategies.ca_mkd import ConfidenceAware
from multikd.method.strategies.ebkd import EntropyBased
from multikd.method.strategies.best import Best
from multikd.method.strategies.correct_only import CorrectOnly
from multikd.method.strategies.random_teacher import RandomTeacher
from multikd.method.strategies.fixed import Fixed
from multikd.method.strategies.aekd import AEKD
from multikd.method.strategies.mtkd_rl import MTKDRL
from multikd.method.strategies.mmkd import MMKD

__all__ = [
    "AEKD", "AfterStep", "Best", "CEFilter", "ConfidenceAware", "CorrectOnly",
    "EntropyBased", "FitNetMKD", "Fixed", "GRANULARITIES", "LearnedStrategy", "MMKD",
    "MTKDRL", "REFERENCE_LOSS_DEFAULTS", "RandomTeacher", "STRATEGIES", "Selection",
    "StepContext", "StepRecord", "Strategy", "StrategySpec", "Uniform", "best_mask",
    "canonical_name", "check_bool", "check_choice", "check_finite", "check_float",
    "check_int", "check_positive_float", "check_positive_int", "create_strategy",
    "list_strategies", "reference_loss", "register_strategy", "score_of",
    "uniform_selection",
]
