"""AEKD under its former name: it lives in :mod:`multikd.method.strategies.aekd`; this
module keeps ``from multikd.method.aekd import ...`` working."""

from multikd.method.strategies.aekd import (  # noqa: F401
    AEKD,
    MAX_TEACHERS,
    capped_simplex_qp,
    kd_logit_gradients,
)
