"""MTKD-RL under its former name: it lives in :mod:`multikd.method.strategies.mtkd_rl`;
this module keeps ``from multikd.method.mtkd_rl import ...`` working."""

from multikd.method.strategies.mtkd_rl import MTKDRL, PolicyNetwork  # noqa: F401
