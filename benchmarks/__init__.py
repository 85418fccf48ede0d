"""Benchmark and evidence scripts of the repository (not installed with the library).

A package so that ``benchmarks.evidence`` can be imported by the scripts here and by the tests in
``tests/benchmarks/`` (both put the repository root on ``sys.path``).
"""
