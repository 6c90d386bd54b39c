"""Analysis of finished runs: learning curves and checkpoint selection.

``curves``: per-skill best steps, drops from best, the checkpoint-selection
table and curve plots, as pure functions over ``writers.metric_curves``.
"""
