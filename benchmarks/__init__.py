"""Benchmarks and measurement scripts, apart from the programs users run (``jobs/``).

Each is ``python -m benchmarks.<name>`` (``--help`` for its flags, ``--config FILE`` for a YAML of them), prints
its figures with the ratio to the ceiling or baseline it measures in the same run, and writes them as JSON
under ``benchmarks/results/``; ``python -m benchmarks.report`` makes docs/benchmarks.md's tables from those
files.
"""
