"""The built-in study: the four recipes over seeds on the synthetic world.

``runs``: presets, each run's config, training and resumption; ``results``:
seed means, best steps and the claims, written as ``results.md``,
``results.json`` and ``curves.png``. The command is
``python -m vlg.tools.study``.
"""
