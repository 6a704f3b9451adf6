"""MMKD under its former name: it lives in :mod:`multikd.method.strategies.mmkd`; this
module keeps ``from multikd.method.mmkd import ...`` working."""

from multikd.method.strategies.mmkd import (  # noqa: F401
    MMKD,
    FeatureWeight,
    LogitsWeight,
    StudentPath,
    WeightNetworks,
)
