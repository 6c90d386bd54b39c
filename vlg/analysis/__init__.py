"""Analysis of finished runs: learning curves, checkpoint selection, probes.

``curves``: per-skill best steps, drops from best, the checkpoint-selection
table and curve plots, as pure functions over ``writers.metric_curves``.
``probing`` (+ ``probing_plots``): the probing breakdowns, Kendall τ, RCM
confusion maps, per-layer curves and results tables (docs/probing.md §4).
"""
