"""Analytic model FLOPs (``vlg.tools.flops``) against independent counts.

Three references: hand-worked numbers for one dense layer and one attention
block; the matmuls (``dot_general``) found in the traced jaxpr of the real
modules and of the real jitted train step, each counted as 2 × output
size × contracted size; and XLA's ``cost_analysis()`` of the compiled train
step, which also counts elementwise work (LayerNorm, softmax, GELU, AdamW).
The XLA count comes from ``vlg.tools.bench.run`` (one compile shared with
the ``bench --mfu`` tests at the end).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx
from jax.extend import core as jex_core

from vlg import sharding
from vlg import train
from vlg import train_state
from vlg.data import batch_spec
from vlg.models import attention
from vlg.models import blocks
from vlg.models import layers
from vlg.models import vit
from vlg.tools import bench
from vlg.tools import flops

import configs.albef as albef_config


def dot_flops(jaxpr) -> int:
  """2·|output|·|contracted dims| summed over every dot_general (and
  2·|output|·kernel height·width·input channels over every ungrouped
  convolution), recursing into sub-jaxprs (jit, custom_jvp, ...).

  The input gradient of a strided convolution is a convolution over the
  output gradient dilated with zeros (``lhs_dilation``); only one input in
  prod(lhs_dilation) is not an inserted zero, so its useful multiplies
  are the dilated count divided by that (the forward convolution's).
  """
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      assert eqn.params['feature_group_count'] == 1
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (O, I, H, W).
      kernel = eqn.invars[1].aval.shape
      dilated = 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          kernel[d] for d in rhs_spec[1:])
      total += dilated // math.prod(eqn.params['lhs_dilation'] or (1,))
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs[d] for d in contract)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(sub, jex_core.ClosedJaxpr):
          total += dot_flops(sub.jaxpr)
        elif isinstance(sub, jex_core.Jaxpr):
          total += dot_flops(sub)
  return total


def _traced_dots(fn, *args) -> int:
  return dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def test_hand_count_of_a_dense_layer_and_an_attention_block():
  # [3, 4] x [4, 5]: 3·5 outputs, each 4 multiplies and 4 adds.
  assert flops.dense(3, 4, 5) == 120
  # 3 queries (width 4) over 5 keys (width 6): q 2·3·4·4 = 96, out 96,
  # k and v 2·5·6·4 = 240 each, scores 2·3·5·4 = 120, weighted sum 120.
  assert flops.attention(3, 5, 4, 6) == 96 + 96 + 240 + 240 + 120 + 120
  # The real modules trace to the same matmuls.
  rngs = nnx.Rngs(0)
  with nnx.use_eager_sharding(False):  # No mesh here.
    dense = layers.Dense(4, 5, ('embed', 'mlp'), rngs=rngs)
    attn = attention.Attention(4, 2, kv_dim=6, rngs=rngs)
  assert _traced_dots(lambda x: dense(x), jnp.ones((3, 4))) == 120
  assert _traced_dots(lambda x, c: attn(x, c), jnp.ones((1, 3, 4)),
                      jnp.ones((1, 5, 6))) == 912


def test_block_counts_match_the_traced_layers():
  rngs = nnx.Rngs(0)
  with nnx.use_eager_sharding(False):
    block = blocks.ViTBlock(8, 2, 16, eps=1e-6, rngs=rngs)
    fusion = blocks.BertLayer(8, 2, 16, eps=1e-12, context_dim=12,
                              rngs=rngs)
  x = jnp.ones((1, 5, 8))
  assert _traced_dots(lambda x: block(x), x) == (
      flops.attention(5, 5, 8, 8) + flops.mlp(5, 8, 16))
  image = jnp.ones((1, 7, 12))
  assert _traced_dots(lambda x, c: fusion(x, None, c), x, image) == (
      flops.attention(5, 5, 8, 8) + flops.attention(5, 7, 8, 12) +
      flops.mlp(5, 8, 16))
  # The [CLS]-only last layer of Model.fuse_cls: one query, fewer than a
  # head's 4 dims, so both attentions fold (no keys or values).
  assert _traced_dots(lambda x, c: fusion(x, None, c, query_rows=1),
                      x, image) == (
      flops.folded_attention(1, 5, 8, 8, 2) +
      flops.folded_attention(1, 7, 8, 12, 2) + flops.mlp(1, 8, 16))
  # With image_index each image's keys and values are projected once.
  index = jnp.array([0, 0, 0])
  assert _traced_dots(lambda x, c: fusion(x, None, c, context_index=index),
                      jnp.ones((3, 5, 8)), image) == (
      3 * flops.attention(5, 5, 8, 8) + 3 * flops.attention(5, 7, 8, 12) +
      3 * flops.mlp(5, 8, 16) - 2 * 2 * flops.dense(7, 12, 8))
  m = ml_collections.ConfigDict(dict(text_width=8, vision_width=12,
                                     text_mlp=16, fusion_layers=3,
                                     text_heads=2))
  assert flops.fusion_layers_cls(m, 5, 7) == (
      2 * flops.fusion_layers(m, 5, 7) // 3 +
      flops.folded_attention(1, 5, 8, 8, 2) +
      flops.folded_attention(1, 7, 8, 12, 2) + flops.mlp(1, 8, 16))


def test_conv_stem_count_matches_the_traced_stem():
  c = albef_config.get_config('tiny')
  c.model.update(vision_stem='conv', vision_stem_channels=(4, 6, 8))
  with nnx.use_eager_sharding(False):
    model = vit.VisionTransformer(c.model, rngs=nnx.Rngs(0))
  # By hand, per 8-pixel patch: 8·8 outputs of 3·3·3 → 4, 4·4 of 3·3·4 → 6,
  # 2·2 of 3·3·6 → 8, then the flattened 2·2·8 → width.
  width = c.model.vision_width
  want = 2 * (64 * 27 * 4 + 16 * 36 * 6 + 4 * 54 * 8 + 32 * width)
  assert flops.conv_stem(c.model) == (want, 2 * 64 * 27 * 4)
  image = jnp.ones((1, c.model.image_size, c.model.image_size, 3))
  patches = (c.model.image_size // c.model.patch_size) ** 2
  counts = flops.vit(c.model, c.model.image_size)
  assert counts['patch_embed'] == patches * want
  assert _traced_dots(lambda x: model(x), image) == (
      counts['patch_embed'] + counts['blocks'])
  # Over the whole image the convolutions have the same output sizes.
  c.model.vision_stem = 'conv_image'
  with nnx.use_eager_sharding(False):
    model = vit.VisionTransformer(c.model, rngs=nnx.Rngs(0))
  assert flops.vit(c.model, c.model.image_size) == counts
  assert _traced_dots(lambda x: model(x), image) == (
      counts['patch_embed'] + counts['blocks'])


def tiny_flops_config():
  """A tiny ALBEF on one device whose matmuls dominate its elementwise work."""
  c = albef_config.get_config('tiny')
  c.model.update(image_size=48, patch_size=8, vision_width=64,
                 vision_depth=1, vision_heads=2, vision_mlp=256,
                 text_width=64, text_layers=1, fusion_layers=2, text_heads=2,
                 text_mlp=256, embed_dim=32, vocab_size=128)
  c.input.resolution = 48
  c.input.data.synthetic.world = dict(resolution=48)
  c.input.data.synthetic.num_examples = 256
  c.input.tokenizer.update(num_texts=300, vocab_size=128)
  c.input.max_text_len = 16
  c.batch_size = 8
  c.queue_size = 16
  c.mesh = (1, 1, 1)
  return c


FAKE_PEAK = 2e11


@pytest.fixture(scope='module')
def bench_figures():
  """``bench.run`` on the tiny config, with a made-up peak for 'cpu'."""
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(flops, 'peak_bf16_flops', lambda kind: FAKE_PEAK)
      return bench.run(tiny_flops_config(), steps=2, warmup=1,
                       matmul_size=128)
  finally:
    jax.config.update('jax_disable_most_optimizations', False)


def test_train_step_matches_traced_matmuls_and_xla_cost_analysis(
    bench_figures):
  c = tiny_flops_config()
  mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
  rules = [tuple(r) for r in c.sharding_rules]
  sharding.set_rules(rules)
  with jax.set_mesh(mesh):
    built = train.build_step(c, mesh, rules)
    state = train_state.with_shardings(built['abstract_state'],
                                       built['shardings'])
    traced = dot_flops(jax.make_jaxpr(built['train_step'])(
        state, batch_spec.batch_spec(c, mesh, rules)).jaxpr)
  analytic = flops.train_step_flops(c)
  assert analytic['total'] == sum(v for k, v in analytic.items()
                                  if k != 'total')
  # The traced step also projects the masked captions' [CLS] to text_feat
  # (embed_text always does; online and momentum pass), which nothing
  # reads: XLA drops it, the analytic count leaves it out.
  unused = 2 * c.batch_size * flops.dense(1, c.model.text_width,
                                          c.model.embed_dim)
  assert traced == analytic['total'] + unused

  assert bench_figures['analytic_flops'] == analytic['total']
  # Split across devices, ITM's 2B negative pairs project their images'
  # keys and values again in every fusion layer but the folded last.
  m = c.model
  tokens = 1 + (c.input.resolution // m.patch_size) ** 2
  again = 3 * 2 * c.batch_size * (m.fusion_layers - 1) * 2 * flops.dense(
      tokens, m.vision_width, m.text_width)
  split = flops.train_step_flops(c, batch_shards=2)
  assert split['total'] - analytic['total'] == split['fusion'] - (
      analytic['fusion']) == again > 0
  ratio = bench_figures['flops_per_step'] / analytic['total']
  # XLA adds elementwise work (LayerNorm, softmax, GELU, masks, AdamW's
  # ~20 FLOPs per parameter): about 10% at these widths; its count can
  # never be below the matmuls it must run.
  assert 1.0 <= ratio <= 1.25, ratio


def test_bench_mfu_figures_and_report(bench_figures):
  r = bench_figures
  c = tiny_flops_config()
  assert r['devices'] == 1 and r['device_kind'] == 'cpu'
  assert r['model_flops'] == pytest.approx(r['analytic_flops'] / r['step_s'])
  assert r['mfu'] == pytest.approx(r['model_flops'] / FAKE_PEAK)
  lines = bench.report(c, r, steps=2, matmul_size=128, mfu=True)
  text = '\n'.join(lines)
  assert f'{r["analytic_flops"] / 1e9:.2f} GFLOP' in text
  assert f'MFU: {100 * r["mfu"]:.1f}% of 1 x 0.2 TFLOP/s' in text
  # Without a known peak (a real CPU): no MFU, the matmul ceiling instead.
  cpu = dict(r, peak_flops=None, mfu=None)
  text = '\n'.join(bench.report(c, cpu, steps=2, matmul_size=128, mfu=True))
  assert "no peak known for 'cpu'" in text
  assert f'{r["model_ratio"]:.2f}x the measured 128^2' in text
  assert r['model_ratio'] == pytest.approx(r['model_flops'] /
                                           r['matmul_flops'])
  assert 'MFU' not in '\n'.join(
      bench.report(c, r, steps=2, matmul_size=128, mfu=False))


def test_unsupported_configs_and_peak_lookup():
  c = tiny_flops_config()
  c.loss.momentum_distill = False
  with pytest.raises(ValueError, match='momentum_distill'):
    flops.train_step_flops(c)
  assert flops.peak_bf16_flops('TPU v4') == 275e12
  assert flops.peak_bf16_flops('TPU v5 lite') == 197e12
  assert flops.peak_bf16_flops('TPU v5p') == 459e12
  assert flops.peak_bf16_flops('TPU v6 lite') == 918e12
  assert flops.peak_bf16_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert flops.peak_bf16_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert flops.peak_bf16_flops('NVIDIA H100 PCIe') == 756e12
  assert flops.peak_bf16_flops('NVIDIA H200') == 989e12
  assert flops.peak_bf16_flops('cpu') is None


def test_bench_and_flops_help_list_their_flags():
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  for module, flag in (('vlg.tools.bench', '--mfu'),
                       ('vlg.tools.flops', '--config')):
    r = subprocess.run([sys.executable, '-m', module, '--help'], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert flag in r.stdout, (module, r.stderr)  # absl's --help exits 1.
