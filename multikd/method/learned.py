"""The base of strategies that learn, under its former name: it lives in
:mod:`multikd.method.strategies.learned`; this module keeps ``from multikd.method.learned
import ...`` working."""

from multikd.method.strategies.learned import (  # noqa: F401
    AfterStep,
    LearnedStrategy,
    StepRecord,
    StrategySpec,
)
