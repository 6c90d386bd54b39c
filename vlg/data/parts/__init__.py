"""Typed batch parts beside the caption batch: one module per part.

The papers vlg follows train on typed data (captions, detection-style
entities, scene graphs), each type with its own batch size and sampling
ratio. vlg builds one stream per enabled part of ``config.input.parts`` and
zips them, so a step sees every part at once and the objectives sum the
parts' losses weighted by their ``ratio`` — the same objective in
expectation as sampling one type per step, with one compiled step
(docs/objectives.md §3.3).

A part named ``X`` is a plug-in found by its name (docs/architecture.md,
"Adding an objective"):

- ``vlg/data/parts/X.py`` defines ``Transform``, a grain ``RandomMap``
  built as ``Transform(tokenizer, input_cfg, part_cfg)`` that turns a
  record (the contract of ``vlg/data/sources.py``) into fixed-shape numpy
  slots prefixed by the part (``prefix``, e.g. ``ent_``; docs/data.md §4),
  drawing only records that have one of its ``requires`` fields (and,
  where the part's config sets ``flagged_only``, its annotation ``flag``,
  e.g. ``has_graph``), and whose classmethod
  ``example_spec(input_cfg, part_cfg)`` declares those
  slots' (shape, dtype) (``vlg/data/batch_spec.py``); and, optionally,
  ``check_model(model_cfg, part_cfg)``, which fails early when the model
  cannot take the part;
- ``vlg/objectives/X.py`` defines ``PART``, its loss
  (``vlg/objectives/pretrain.py``).

The parts here: ``entity`` (X-VLM box concepts), ``mrc`` (masked relation
classification), ``vsg`` (verbalised scene graphs); ``common`` holds what
they share. No jax here (grain workers).
"""

from __future__ import annotations

import importlib
import pkgutil
import types

# Modules of this package that are not parts.
_NOT_PARTS = ('common',)


def names() -> list[str]:
  """Every part this package defines, sorted."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if m.name not in _NOT_PARTS)


def part_module(name: str) -> types.ModuleType:
  """The module of part ``name``; a clear error for an unknown name."""
  if name not in names():
    raise ValueError(f'input.parts names an unknown part {name!r}; valid: '
                     f'{names()} (a part X is the module vlg/data/parts/X.py)')
  return importlib.import_module(f'{__name__}.{name}')
