"""The machinery that trains a learner: config, build, engine, run files, schedule, meters.

Also RNG state, DDP, the host-sync detector, the teacher-logit cache and lockstep groups.
Imports ``data``, ``models``, ``method`` and ``plugins``; never ``bench`` or ``cli``.
"""
