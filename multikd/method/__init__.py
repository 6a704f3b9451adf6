"""The method: what a researcher changes to try a new idea in multi-teacher distillation.

The frozen teacher ensemble and its runners, the teacher-weighting strategies (a registry),
feature adapters, the losses, and the distiller that wires one step. Imports ``models``,
``errors`` and ``atomic`` only: never ``train``, ``bench`` or ``data``.
"""
