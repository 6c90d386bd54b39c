"""Projects built on vlg's core, each in its own subpackage.

``probing``: the probing toolkit of "Lost in Space" (probes of trained
models and of resamplers on a frozen tower; docs/probing.md). ``study``:
the multi-seed comparison of the four pretraining recipes on the synthetic
world (``python -m vlg.tools.study``; docs/benchmarks.md §14).

A project imports the core (models, objectives, data, evaluators, train,
analysis, ...); the core never imports a project, and projects do not
import each other (tests/test_layout.py).
"""
