"""Tolerances for the tests' float comparisons, derived from the dtype and the reduction.

No test may depend on one CPU's summation order (issue 33). ATen picks its vectorised
kernels by CPU capability (AVX-512, AVX2 or scalar: ``ATEN_CPU_CAPABILITY``), oneDNN its
convolutions by ISA (``ONEDNN_MAX_CPU_ISA``) and MKL its GEMM blocking
(``MKL_ENABLE_INSTRUCTIONS``), so the same float32 expression rounds differently on
another x86 machine, and two different expressions of one formula (the package's and a
hand-written reference) differ by an amount that changes from machine to machine.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §4.2): a sum
of n terms evaluated in any order is within ``gamma_{n-1} * sum|x_i|`` of the exact sum,
``gamma_m = m*u / (1 - m*u)`` with the unit roundoff ``u = eps/2``. Two orders therefore
differ by at most about ``(n-1) * eps * sum|x_i|``, that is ``(n-1) * eps * cond`` relative to
the result, where ``cond = sum|x_i| / |sum x_i|`` is the sum's condition number (1 for terms
of one sign; large under cancellation, as in a KL divergence between two nearby
distributions: ``sum p (log p - log q)`` with ``|log p| >> |log p - log q|``).

Policy:

* A reference formula (a paper's or a public repository's computation written out by hand
  in a test) is checked in float64, both sides, at :data:`REF64` (rtol 1e-10), or for a
  tensor through a network at :func:`ref64` (the same, relative to its largest value).
  That is the project's "1e-6 or better" check of the formula with four orders of magnitude
  to spare for rounding: a float64 reduction of n terms with condition number cond is off
  by at most ``n * cond * 2.2e-16``, and a network of L such layers by L times that, below
  1e-10 for ``L * n * cond < 4.5e5`` (the models here: L <= 60 layers of fan-in n <= 2304,
  at cond 1 relative to the largest value; the KL losses: cond <= 25 over a few hundred
  terms). The package keeps float64 when given float64 (``multikd.method.precision.upcast``):
  ``model.double()`` and a float64 batch.
* A float32 result compared with another float32 computation of the same quantity through
  other kernels uses :func:`f32_tol` with the length of the longest reduction involved (and
  its condition number where there is cancellation: :func:`order_rtol`), or
  :func:`f32_network_tol` where the quantity runs through a whole network (the layers'
  errors add up).
* ``assert_close``'s float32 defaults (rtol 1.3e-6, atol 1e-5) only where the two sides
  differ by the order of a reduction of a few terms of magnitude about 1 (a mean over a
  handful of samples, a sum over 3 teachers): ``order_rtol(10) = 1.1e-6``.
* Bit equality (``torch.equal``, ``rtol=0, atol=0``) only where both sides run the same
  kernels on the same inputs in the same process (determinism, resume, cache replay,
  copies of weights); never between two different code paths.

Reproducing another CPU on this one: ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) alone
does not change the convolutions and GEMMs, which are oneDNN's and MKL's; an AVX2-only
machine is ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``
(:data:`CPU_PROFILES`; each variable only lowers the ISA, so any x86 CPU can run them).
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2**-52 ~ 2.22e-16

CPU_PROFILES = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
"""Environment variables that make torch on this CPU pick the kernels of an AVX2-only CPU
(``avx2``) or of a CPU without AVX (``default``: ATen's scalar kernels, SSE4.1 oneDNN)."""

REF64 = {"rtol": 1e-10, "atol": 1e-12}
"""``assert_close`` keywords for a float64 reference check (see the module docstring); the
atol only covers results that are exactly 0 in exact arithmetic (gradients of unused
entries), which land within a few eps64 of 0."""


def ref64(expected: torch.Tensor) -> dict:
    """``assert_close`` keywords for a float64 reference check of a tensor that comes out of
    a network or a long chain of ops: :data:`REF64`'s rtol, and as atol the same fraction of
    the tensor's largest magnitude (an element that cancels to near 0 carries the rounding
    of the large values it came from)."""
    scale = max(float(expected.detach().abs().max()), 1.0) if expected.numel() else 1.0
    return {"rtol": REF64["rtol"], "atol": REF64["rtol"] * scale}


def order_rtol(n_terms: int, dtype: torch.dtype = torch.float32, cond: float = 1.0) -> float:
    """Worst-case relative difference between two evaluation orders of a sum of ``n_terms``
    terms in ``dtype``: ``(n-1) * eps * cond`` (twice ``gamma_{n-1}``, see the module
    docstring), with ``cond = sum|x_i| / |sum x_i|`` the condition number of the sum."""
    if n_terms < 1:
        raise ValueError(f"a reduction has at least one term, got n_terms={n_terms}")
    if cond < 1:
        raise ValueError(f"a sum's condition number is at least 1, got cond={cond}")
    eps = torch.finfo(dtype).eps
    # a single term still rounds once when it is scaled or converted: at least 1 eps
    return max(n_terms - 1, 1) * eps * cond


def f32_tol(n_terms: int, cond: float = 1.0, scale: float = 1.0) -> dict:
    """``assert_close`` keywords for two float32 evaluations of one quantity that reduce
    ``n_terms`` terms in different orders: ``rtol = order_rtol(n_terms, float32, cond)`` and
    ``atol = rtol * scale``, ``scale`` being the magnitude of the compared values (elements
    that come out near 0 by cancellation are then held to the bound of the larger ones)."""
    rtol = order_rtol(n_terms, torch.float32, cond)
    return {"rtol": rtol, "atol": rtol * scale}


def f32_network_tol(model: torch.nn.Module, scale: float) -> dict:
    """``assert_close`` keywords for two float32 forward passes of ``model`` through other
    kernels (a grouped convolution against K separate ones, another ISA's GEMM blocking):
    each of its L convolution/linear layers reduces at most n terms (its largest fan-in)
    and so adds at most ``order_rtol(n)`` of its output's scale; summed over the layers,
    ``rtol = L * order_rtol(n)`` relative to ``scale``, the largest magnitude compared
    (normalised layers keep the scale; a first-order bound, pessimistic by orders of
    magnitude in practice, since rounding errors mostly cancel)."""
    fan_ins = [
        m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, torch.nn.Conv2d) else m.in_features
        for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    rtol = len(fan_ins) * order_rtol(max(fan_ins))
    return {"rtol": rtol, "atol": rtol * max(scale, 1.0)}
