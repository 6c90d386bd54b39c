"""A config's global training batch as ``jax.ShapeDtypeStruct``s, without data.

  spec = batch_spec.batch_spec(config)              # shapes and dtypes
  spec = batch_spec.batch_spec(config, mesh, rules)  # ... with shardings

Tools that compile the train step without running it (``vlg.tools.aot``
for TPU pods, ``vlg.tools.bench``) need the batch's shapes. They come from
the pipeline itself rather than from a list kept beside it: every stream
:func:`vlg.data.pipeline.make_dataset` zips (the caption transform of
``input.kind`` and each enabled part of ``input.parts``) declares the
slots its ``random_map`` returns with ``example_spec``, and each stream's
examples are stacked into its global batch size
(:func:`vlg.data.pipeline.stream_batch_sizes`), as ``make_dataset`` batches
them. ``tests/data/test_batch_spec.py`` checks the result against real
batches of every family.

With a mesh, each slot carries the sharding :func:`vlg.data.pipeline.
to_global` gives the real batch (the leading dimension by the ``batch``
rule), so ``train_step.lower(state, spec)`` compiles the program the
training loop runs.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import numpy as np

from vlg import sharding
from vlg.data import parts as parts_lib
from vlg.data import pipeline

SlotSpec = dict[str, tuple[tuple[int, ...], Any]]


def example_specs(input_cfg: ml_collections.ConfigDict) -> dict[str, SlotSpec]:
  """Per stream (``caption`` and each enabled part), the (shape, dtype) of
  every slot of one example."""
  specs = {'caption': pipeline.caption_transform_class(
      input_cfg).example_spec(input_cfg)}
  for name, part_cfg in pipeline.enabled_parts(input_cfg).items():
    transform_cls = parts_lib.part_module(name).Transform
    specs[name] = transform_cls.example_spec(input_cfg, part_cfg)
  return specs


def batch_spec(config: ml_collections.ConfigDict, mesh=None, rules=None
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of one training step of ``config``, slot by slot.

  Args:
    config: a training config (``batch_size``, ``input``).
    mesh: if given, every slot gets the batch sharding of
      :func:`vlg.data.pipeline.to_global` on it.
    rules: the logical→mesh rules for that sharding (default: those set).

  Returns:
    ``{slot: jax.ShapeDtypeStruct}``, the leading dimension of each slot
    its stream's global batch size.
  """
  sizes = pipeline.stream_batch_sizes(config.input, config.batch_size)
  out = {}
  for stream, spec in example_specs(config.input).items():
    for slot, (shape, dtype) in spec.items():
      shape = (sizes[stream],) + tuple(shape)
      where = (None if mesh is None else
               sharding.batch_sharding(mesh, len(shape), rules))
      out[slot] = jax.ShapeDtypeStruct(shape, np.dtype(dtype), sharding=where)
  return out


def check_divisible(config: ml_collections.ConfigDict, mesh) -> None:
  """Every stream's batch must split over the mesh's data shards (``data``
  × ``fsdp``) times ``grad_accum_steps``.

  Raises:
    ValueError: naming the batch size that does not.
  """
  data_shards = sharding.data_shards(mesh)
  accum = int(config.get('grad_accum_steps', 1))
  batch_sizes = {'batch_size': config.batch_size}
  batch_sizes.update({f'input.parts.{k}.batch_size': v.batch_size for k, v in
                      pipeline.enabled_parts(config.input).items()})
  for name, size in batch_sizes.items():
    if size % (data_shards * accum):
      raise ValueError(
          f'{name}={size} does not divide over the {data_shards} data shards '
          f'of mesh {dict(mesh.shape)} times grad_accum_steps={accum}; '
          + _divisible_hint(batch_sizes.values(), accum, mesh.size, name,
                            data_shards))


def _divisible_hint(sizes, accum: int, devices: int, name: str,
                    data_shards: int) -> str:
  """What would split: the most data shards (``data`` x ``fsdp``) that
  divide every batch over the same devices, the rest on ``tensor``; or the
  batch size that would split over these shards."""
  common = math.gcd(*sizes)
  d = max((k for k in range(1, devices + 1)
           if devices % k == 0 and common % (k * accum) == 0), default=1)
  hint = f'set {name} to a multiple of {data_shards * accum}'
  if 1 < d < devices:
    hint = (f'at most {d} data shards divide every batch: e.g. '
            f'--config.mesh={d},1,{devices // d} (the rest on tensor), '
            f'or {hint}')
  return hint
