"""The probing toolkit of "Lost in Space" (docs/probing.md).

``taps`` (what a model exposes), ``heads``, ``tasks`` (RefCOCOg-style
boxes, VSR, RCM), ``rcm``, ``train``, ``hpo``, ``feature_cache``,
``stage1`` and ``stage1_models`` (resamplers trained on a frozen tower),
``analysis`` (breakdowns, Kendall tau), ``seed_tables`` (mean ± std over
seeds, layer curves, Tables 1-3) and ``plots`` (figures).
Commands: ``python -m vlg.projects.probing.stage1`` and
``python -m vlg.projects.probing.run``.
"""
