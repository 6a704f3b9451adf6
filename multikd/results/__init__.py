"""Results: finished run folders → tables, paired statistics, plots, cost columns, report.

Reads runs through ``train.runio`` and counts costs with ``models``: it may import ``train``,
``models`` and ``plugins``, never ``bench`` (its caller) or ``cli``. ``tables`` never
imports ``plots``.
"""
