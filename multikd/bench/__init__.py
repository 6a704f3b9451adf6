"""Benchmarks: suites (YAML) expanded into runs, their runner, then tables and plots.

Reads run folders through ``train`` (it may import ``train``, ``method``, ``models``,
``data``); never imported by them. Within it, ``results`` never imports ``plots``.
"""
