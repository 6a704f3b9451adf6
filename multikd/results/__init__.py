"""Results: finished run folders → tables, paired statistics, plots, cost columns, report.

Reads runs through ``train.runio`` and counts costs with ``models``: it may import ``train``
and ``models``, never ``bench`` (its caller) or ``cli``. ``tables`` never imports ``plots``.
"""
