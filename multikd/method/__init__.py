"""The method: what a researcher changes to try a new idea in multi-teacher distillation.

The frozen teacher ensemble and its runners, the teacher-weighting strategies (one module
each in :mod:`.strategies`), feature adapters, the logit and feature losses, and the
distiller that wires one step. Every extension point is a registry (:mod:`.registry`):
strategies, logit losses, feature losses, adapters. Imports ``models``, ``errors`` and
``atomic`` only: never ``train``, ``bench`` or ``data``.
"""
