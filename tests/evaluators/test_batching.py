"""BatchRunner: padded batches, texts cut to their batch's longest.

A fake predict function records the text width of every batch it is
traced with and returns row-wise outputs, so row order, padding and the
cut can be checked exactly; the shrunk tiny model then checks that cutting
the texts leaves every score and every real token's embedding as the full
width gives them (the attention masks hide the padding).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlg import predict
from vlg import sharding
from vlg import train_state
from vlg.evaluators import batching

from test_train import shrunk_model_setup


def test_text_lengths_and_widths():
  masks = np.array([[1, 1, 1, 0, 0],
                    [1, 0, 1, 1, 0],  # A hole: the last nonzero counts.
                    [0, 0, 0, 0, 0],
                    [1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(batching.text_lengths(masks), [3, 4, 0, 5])
  with pytest.raises(ValueError, match=r'\[N, L\]'):
    batching.text_lengths(np.ones(4))
  assert [batching.trimmed_width(n, 30) for n in (0, 1, 8, 9, 16, 17, 30)] \
      == [8, 8, 8, 16, 16, 30, 30]
  assert [batching.trimmed_width(n, 128) for n in (33, 64, 65, 128)] == [
      64, 64, 128, 128]
  assert batching.trimmed_width(5, 4) == 4  # Never wider than the input.


def _fake_runner(mesh, batch_size, seen):
  def fn(params, batch):
    seen.append(batch['text_ids'].shape[1])  # Once per traced shape.
    ids = batch['text_ids'] * batch['text_mask']
    return {'total': ids.sum(1) * params,
            'text_embeds': jnp.stack([ids, 2 * ids], -1).astype(jnp.float32)}
  return batching.BatchRunner(fn, batch_size=batch_size, mesh=mesh,
                              rules=[('batch', ('data', 'fsdp'))])


@pytest.mark.parametrize('mesh_sizes,batch_size', [((1, 1, 1), 4),
                                                   ((8, 1, 1), 8)])
def test_rows_come_back_in_order_with_text_outputs_padded(mesh_sizes,
                                                          batch_size):
  mesh = sharding.make_mesh(mesh_sizes,
                            devices=jax.devices()[:int(np.prod(mesh_sizes))])
  rng = np.random.default_rng(0)
  n, full = 11, 40
  lengths = rng.choice([3, 5, 12, 20, 40], n)
  ids = rng.integers(1, 50, (n, full)).astype(np.int32)
  masks = (np.arange(full) < lengths[:, None]).astype(np.int32)
  built = []

  def rows(picked):
    built.append(list(picked))
    return {'text_ids': ids[picked], 'text_mask': masks[picked]}

  seen_cut, seen_full = [], []
  with jax.set_mesh(mesh):
    cut = _fake_runner(mesh, batch_size, seen_cut).run(
        jnp.int32(3), n, rows, text_lengths=batching.text_lengths(masks))
    whole = _fake_runner(mesh, batch_size, seen_full).run(
        jnp.int32(3), n, lambda p: {'text_ids': ids[p],
                                    'text_mask': masks[p]})
  expected = (ids * masks).sum(1) * 3
  np.testing.assert_array_equal(cut['total'], expected)
  np.testing.assert_array_equal(whole['total'], expected)
  assert cut['text_embeds'].shape == (n, full, 2)
  np.testing.assert_array_equal(cut['text_embeds'], whole['text_embeds'])
  # Shortest first: the first batch holds the shortest texts, and the
  # function saw cut widths below the full one.
  assert set(lengths[built[0]]) <= set(np.sort(lengths)[:batch_size])
  assert min(seen_cut) < full and seen_full == [full]
  with pytest.raises(ValueError, match='one per row'):
    _fake_runner(mesh, batch_size, []).run(jnp.int32(1), n, rows,
                                           text_lengths=lengths[:3])


def test_model_scores_and_embeddings_equal_at_the_full_width(fast_compile):
  c, mesh, rules, graphdef, specs = shrunk_model_setup()
  full = 24
  with jax.set_mesh(mesh):
    params = train_state.init_params(c.model, 0, sharding.named(mesh, specs))
    fns = predict.make_predict_fns(graphdef)
    rng = np.random.default_rng(2)
    n, res = 6, int(c.input.resolution)
    images = rng.integers(0, 256, (n, res, res, 3), np.uint8)
    lengths = np.array([3, 7, 12, 5, 9, 4])
    ids = rng.integers(5, int(c.model.vocab_size), (n, full)).astype(np.int32)
    masks = (np.arange(full) < lengths[:, None]).astype(np.int32)
    ids = ids * masks
    batch = {'image': images, 'text_ids': ids, 'text_mask': masks,
             '_mask': np.ones(n, np.int32)}
    reference = jax.jit(fns['image_text_scores'])(params, batch)
    ref_text = jax.jit(fns['text_features'])(params, batch)
    runner = batching.BatchRunner(fns['image_text_scores'], batch_size=2,
                                  mesh=mesh, rules=rules)
    got = runner.run(params, n, lambda p: {
        'image': images[p], 'text_ids': ids[p], 'text_mask': masks[p]},
        text_lengths=lengths)
    text = batching.BatchRunner(fns['text_features'], batch_size=2,
                                mesh=mesh, rules=rules).run(
        params, n, lambda p: {'text_ids': ids[p], 'text_mask': masks[p]},
        text_lengths=lengths)
  for k in ('itm', 'itc'):
    np.testing.assert_allclose(got[k], reference[k], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(text['text_feat'], ref_text['text_feat'],
                             rtol=1e-5, atol=1e-6)
  real = masks.astype(bool)
  np.testing.assert_allclose(text['fusion_text'][real],
                             np.asarray(ref_text['fusion_text'])[real],
                             rtol=1e-5, atol=1e-5)
  # Sorted by length, the batches of two are cut to 8, 8 and 16 tokens;
  # the positions beyond a batch's cut come back as zeros.
  assert not text['fusion_text'][:, 16:].any()
  assert not text['fusion_text'][lengths <= 7, 8:].any()
  assert text['fusion_text'][lengths > 7, 8:16].all(axis=-1).any()
