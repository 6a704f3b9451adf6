"""Benchmarks: suites (YAML) expanded into runs, their runner, executors, shards and status.

Trains through ``train`` and hands finished runs to ``results``: it may import ``train``,
``results``, ``method``, ``models``, ``data`` and ``plugins``; none of them imports it.
"""
