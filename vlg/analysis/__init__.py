"""Analysis of finished runs: learning curves, checkpoint selection, chance.

``curves``: per-skill best steps, drops from best, the checkpoint-selection
table and curve plots, as pure functions over ``writers.metric_curves``.
``significance``: how far a metric lies above chance, in binomial standard
deviations. The projects' own analyses live with them
(``vlg.projects.probing.analysis``, ``vlg.projects.study.results``).
"""
