"""vlg.tools.validate: held-out data of the run's own mixture, combined by count.

The end-to-end run of every part (a trained ReX-VLM workdir at steps 0 and
3) is in ``tests/test_families.py``, which trains that workdir anyway; the
caption ITM probe and false negatives are checked end to end here on the
session's tiny ALBEF run of ``tests/test_restore.py``.
"""

import dataclasses
import math
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from vlg import recipes
from vlg import restore
from vlg import sharding
from vlg import train_state
from vlg.data import pipeline
from vlg.evaluators import common as eval_common
from vlg.synthetic import contrast
from vlg.synthetic import layout
from vlg.synthetic import source as synthetic_source
from vlg.synthetic import truth
from vlg.synthetic import world
from vlg.tools import itm_probe
from vlg.tools import validate
from vlg.tools import word_probe
from vlg.weights import common as weights_common

from test_restore import trained_run
from test_train import tiny_test_config

REPO = os.path.join(os.path.dirname(__file__), '..', '..')


def test_heldout_input_switches_every_synthetic_source_to_the_split():
  c = recipes.family_config('rexvlm', 'tiny,evals=False')
  c.input.parts.mrc.data = dict(
      graphs=dict(source='synthetic', split='train', weight=1.0))
  got = validate.heldout_input(c.input, 'val', batch_size=12)
  assert got.data.synthetic.split == 'val'
  assert got.parts.mrc.data.graphs.split == 'val'
  assert tuple(got.augment) == ()
  assert {p.batch_size for p in got.parts.values()} == {12}
  # The run's own config is untouched.
  assert c.input.data.synthetic.split == 'train'
  assert c.input.parts.mrc.data.graphs.split == 'train'
  assert tuple(c.input.augment) == ('crop', 'flip', 'brightness')


def test_heldout_input_refuses_real_data_and_the_training_split():
  c = recipes.family_config('rexvlm', 'tiny,evals=False')
  c.input.parts.entity.data = dict(
      vg_regions=dict(source='prepared', dir='/data/vg', weight=1.0))
  with pytest.raises(ValueError, match=r'input\.parts\.entity\.data\.'
                     r"vg_regions is a 'prepared' source"):
    validate.heldout_input(c.input, 'val', batch_size=8)
  with pytest.raises(ValueError, match="split='train'"):
    validate.heldout_input(recipes.albef_config('tiny').input, 'train', 8)


def test_combine_weights_batch_means_by_their_counts():
  batches = [
      dict(loss=np.float32(2.0), mrc_acc=np.float32(0.5),
           mrc_loss=np.float32(1.0), mrc_num=np.float32(2),
           mlm_acc=np.float32(1.0), mlm_num_masked=np.float32(1),
           mrc_majority_rate=np.float32(0.9), box_mean_iou=np.float32(0.9),
           box_iou=np.array([0.2, 0.6, 0.9]), box_is_box=np.array([1, 1, 0])),
      dict(loss=np.float32(4.0), mrc_acc=np.float32(0.0),
           mrc_loss=np.float32(4.0), mrc_num=np.float32(6),
           mlm_acc=np.float32(0.0), mlm_num_masked=np.float32(3),
           mrc_majority_rate=np.float32(0.9), box_mean_iou=np.float32(0.9),
           box_iou=np.array([0.4, 0.0, 0.0]), box_is_box=np.array([1, 0, 0])),
  ]
  got = validate.combine(batches)
  assert got['loss'] == pytest.approx(3.0)
  # 1 of 8 triplets right; losses 2 × 1.0 + 6 × 4.0 over 8.
  assert got['mrc_acc'] == pytest.approx(1 / 8)
  assert got['mrc_loss'] == pytest.approx(26 / 8)
  assert got['mrc_num'] == 8
  assert got['mlm_acc'] == pytest.approx(1 / 4)
  assert got['mlm_num_masked'] == 4
  # Only box pairs count: IoUs 0.2, 0.6 and 0.4.
  assert got['box_num'] == 3
  assert got['box_mean_iou'] == pytest.approx(0.4)
  assert got['box_acc50'] == pytest.approx(1 / 3)
  # A per-batch majority rate is not the held-out set's: it is left out
  # for validate() to compute from the labels.
  assert 'mrc_majority_rate' not in got


def test_majority_rate():
  assert validate.majority_rate(np.array([3, 1, 3, 3, 0])) == 0.6
  assert np.isnan(validate.majority_rate(np.array([], np.int32)))


def test_command_line_help():
  helped = subprocess.run(
      [sys.executable, '-m', 'vlg.tools.validate', '--help'],
      capture_output=True, text=True, check=False, cwd=REPO)
  assert helped.returncode in (0, 1), helped.stderr  # absl's --help exits 1.
  assert 'on held-out data, per kept checkpoint' in helped.stdout
  for flag in ('--workdir', '--steps', '--batches', '--split', '--write'):
    assert flag in helped.stdout, flag


def _logits(margins):
  """[N, 2] ITM logits whose match-minus-mismatch margin is ``margins``."""
  margins = np.asarray(margins, np.float32)
  return np.stack([np.zeros_like(margins), margins], axis=-1)


def _probe(ids, truth_matrix=None):
  ids = np.asarray(ids)
  neg_image, neg_text, has = itm_probe.uniform_negatives(
      ids, np.random.default_rng(0))
  return itm_probe.CaptionProbe(ids, neg_image, neg_text, has, truth_matrix)


def test_auroc_counts_ties_half():
  # Positives 0.9 and 0.5 against 0.5, 0.1, 0.3, 0.95: 3 + (2 + ½) wins of
  # 8 pairs.
  # validate pools its ITM scores through the evaluators' AUROC.
  assert eval_common.auroc([0.9, 0.5], [0.5, 0.1, 0.3, 0.95]) == (
      pytest.approx(5.5 / 8))
  assert eval_common.auroc([0.0], [1.0]) == 0.0
  assert np.isnan(eval_common.auroc([0.3, 0.4], []))


def test_itm_probe_pools_accuracy_and_auroc_over_batches():
  # Batch 1: two images, rows [pos, pos, neg image, neg image, neg text,
  # neg text]. Batch 2 shows one image twice: its negative rows have no
  # negative and are left out, whatever their logits.
  per_batch = [
      {'itm_random_logits': _logits([2.0, -1.0, -1.0, -3.0, 0.5, 0.0])},
      {'itm_random_logits': _logits([1.0, -2.0, 5.0, 5.0, 5.0, 5.0])},
  ]
  probes = [_probe([10, 11]), _probe([12, 12])]
  assert not probes[1].has_negative.any()
  got = itm_probe.itm_probe_metrics(per_batch, probes)
  # Positives 2, -1, 1, -2 against negatives -1, -3, 0.5, 0: wins 4, 1.5,
  # 4 and 1 of 16 pairs (the tie at -1 counts half).
  assert got['itm_random_auroc'] == pytest.approx(10.5 / 16)
  # Argmax: positives 2 and 1 right, -1 and -2 wrong; negatives -1, -3 and
  # 0 (a tie answers "not matched") right, 0.5 wrong: 5 of 8.
  assert got['itm_random_acc'] == pytest.approx(5 / 8)
  assert got['itm_random_prior'] == pytest.approx(2 / 3)
  # 2 of 4 positives and 3 of 4 negatives right.
  assert got['itm_random_recall'] == pytest.approx(2 / 4)
  assert got['itm_random_specificity'] == pytest.approx(3 / 4)
  # Sorted margins -3n -2p -1p -1n 0n .5n 1p 2p: "matched" above -2.5
  # gets 1 + 4 = 5; above 0.75 gets 4 negatives + 2 positives = 6 of 8
  # (the tie at -1 cannot be split).
  assert got['itm_random_acc_best_threshold'] == pytest.approx(6 / 8)
  assert 'fn_hard_share' not in got  # No truth given.


def test_uniform_negatives_are_of_another_image_and_cover_them():
  rng = np.random.default_rng(3)
  ids = np.array([4, 4, 9, 4, 7, 9, 4, 1])
  seen = {b: set() for b in range(ids.size)}
  for _ in range(200):
    neg_image, neg_text, has = itm_probe.uniform_negatives(ids, rng)
    assert has.all() and neg_image.dtype == np.int32
    assert np.all(ids[neg_image] != ids) and np.all(ids[neg_text] != ids)
    for b in range(ids.size):
      seen[b] |= {int(neg_image[b]), int(neg_text[b])}
  for b in range(ids.size):
    assert seen[b] == set(np.flatnonzero(ids != ids[b])), b
  # One image only: no negative, each row keeps its own index.
  neg_image, neg_text, has = itm_probe.uniform_negatives(np.array([5, 5, 5]),
                                                        rng)
  assert not has.any() and list(neg_image) == list(neg_text) == [0, 1, 2]


# Caption j true of image i; the diagonal (own captions) true.
_TRUTH = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
_SIM_I2T = np.array([[5.0, 0.0, np.log(3)], [0.0, 9.0, 0.0],
                     [np.log(4), 0.0, 7.0]])
_SIM_T2I = np.array([[0.0, np.log(3), 0.0], [0.0, 0.0, 0.0],
                     [0.0, 0.0, 0.0]])


def test_hard_negative_true_share_by_hand():
  # Image → text weights (diagonal excluded): rows [0, 1/4, 3/4],
  # [1/2, 0, 1/2], [4/5, 1/5, 0]; true negatives 1/4 + 1/2 + 4/5.
  # Text → image: text 0 draws image 1 (3/4, false) or 2 (1/4, true);
  # texts 1 and 2 each one true image of two: 1/4 + 1/2 + 1/2.
  got, num = itm_probe.hard_negative_true_share(_SIM_I2T, _SIM_T2I,
                                               np.array([1, 2, 3]), _TRUTH)
  assert num == 6 and got == pytest.approx(1.55 + 1.25)
  # Images 0 and 1 are one image: neither is the other's negative. Image →
  # text: 0 picks text 2 (false), 1 picks text 2 (true), 2 picks 0 (4/5,
  # true) or 1; text → image: texts 0 and 1 pick image 2 (true, false),
  # text 2 picks image 0 or 1 (one true).
  got, num = itm_probe.hard_negative_true_share(_SIM_I2T, _SIM_T2I,
                                               np.array([1, 1, 3]), _TRUTH)
  assert num == 6 and got == pytest.approx(1.8 + 1.5)


def test_hard_negative_kinds_by_hand():
  # The pairs of _TRUTH, with why each false one is false: (0, 2) a
  # relation, (1, 0) a word, (2, 1) a binding. With the weights of the
  # test above: image -> text 3/4 relation, 1/2 word, 1/5 binding; text ->
  # image 3/4 word (text 0 -> image 1), 1/2 binding, 1/2 relation.
  kinds = np.array([[0, 0, 5], [2, 0, 0], [0, 3, 0]], np.int8)
  assert truth.NEGATIVE_KINDS[2:4] + truth.NEGATIVE_KINDS[5:] == (
      'word', 'binding', 'relation')
  # Uniform negatives: rows (image 1, text 0) word, (2, 1) binding, (0, 2)
  # relation, then (0, 2) relation, (1, 0) word, (2, 1) binding; one
  # binding and one relation row answered "matched".
  probe = itm_probe.CaptionProbe(
      np.array([1, 2, 3]), np.array([1, 2, 0], np.int32),
      np.array([2, 0, 1], np.int32), np.ones(3, bool), _TRUTH, kinds)
  out = {'itm_random_logits': _logits([0, 0, 0, -1, 1, -1, 1, -1, -1]),
         'itm_sim_i2t': _SIM_I2T, 'itm_sim_t2i': _SIM_T2I}
  got = itm_probe.itm_probe_metrics([out], [probe])
  assert got['hard_neg_kind/true'] == pytest.approx(2.8 / 6)
  assert got['hard_neg_kind/true'] == pytest.approx(got['fn_hard_share'])
  assert got['hard_neg_kind/word'] == pytest.approx(1.25 / 6)
  assert got['hard_neg_kind/binding'] == pytest.approx(0.7 / 6)
  assert got['hard_neg_kind/relation'] == pytest.approx(1.25 / 6)
  assert got['hard_neg_kind/count'] == got['hard_neg_kind/borderline'] == 0
  for kind, right in (('word', 1.0), ('binding', 0.5), ('relation', 0.5)):
    assert got[f'itm_random_num/{kind}'] == 2
    assert got[f'itm_random_specificity/{kind}'] == right, kind
  # Positive margins 0, 0, 0 against the binding negatives' 1 and -1.
  assert got['itm_random_auroc/binding'] == pytest.approx(0.5)
  assert got['itm_random_auroc/word'] == pytest.approx(1.0)
  assert got['itm_random_num/true'] == 0
  assert math.isnan(got['itm_random_specificity/true'])
  no_kinds = itm_probe.itm_probe_metrics(
      [out], [dataclasses.replace(probe, kinds=None)])
  assert 'fn_hard_share' in no_kinds and not any(
      k.startswith(('hard_neg_kind/', 'itm_random_num/')) for k in no_kinds)


def test_false_negative_rates_by_hand():
  probe = itm_probe.CaptionProbe(
      image_ids=np.array([1, 2, 3]), neg_image=np.array([2, 0, 1], np.int32),
      neg_text=np.array([1, 2, 0], np.int32),
      has_negative=np.ones(3, bool), truth=_TRUTH)
  got = itm_probe.false_negative_rates([probe])
  # Off-diagonal true pairs: (0, 1), (1, 2), (2, 0) of 6.
  assert got['fn_pair_rate'] == pytest.approx(3 / 6)
  # Texts 1, 2, 0 for images 0, 1, 2: all true; images 2, 0, 1 for texts
  # 0, 1, 2: truth[2, 0], truth[0, 1], truth[1, 2], all true.
  assert got['fn_random_share'] == pytest.approx(1.0)
  probe = dataclasses.replace(probe, neg_text=np.array([2, 0, 1], np.int32))
  assert itm_probe.false_negative_rates([probe])[
      'fn_random_share'] == pytest.approx(0.5)
  assert itm_probe.false_negative_rates(
      [dataclasses.replace(probe, truth=None)]) == {}


@pytest.mark.xdist_group('tiny_run')
def test_validate_reports_itm_probe_and_false_negatives(tmp_path_factory,
                                                        fast_compile):
  """On the session's tiny run: the new metrics are there and in range, and
  the false-negative pair rate is the truth of the captions that the
  batches' ``caption_index`` names in the records."""
  workdir, _ = trained_run(tmp_path_factory)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  got = validate.validate(workdir, steps=[6], batches=2, batch_size=16,
                          twins=20, mesh=mesh, log=lambda line: None)
  res = got[6]
  assert res['twin_num'] == 20 == sum(
      res.get(f'twin_num/{e}', 0) for e in ('swap', 'recolour', 'reverse'))
  for key in ('twin_itm_text', 'twin_itm_pair_acc', 'twin_itc_group',
              'twin_mlm_colour_acc', 'twin_mlm_colour_acc_on_twin'):
    assert 0 <= res[key] <= 1, key
  assert res['twin_mlm_colour_num'] > 0
  for key in ('itm_random_acc', 'itm_random_auroc', 'fn_random_share',
              'fn_hard_share', 'fn_pair_rate'):
    assert 0 <= res[key] <= 1, key
  assert res['itm_random_prior'] == pytest.approx(2 / 3)
  cfg = restore.load_config(workdir)
  stream = iter(pipeline.make_dataset(
      validate.heldout_input(cfg.input, 'val', 16),
      restore.load_tokenizer(workdir, cfg), global_batch=16, seed=cfg.seed))
  world_cfg = world.WorldConfig(**dict(cfg.input.data.synthetic.world))
  true = pairs = 0
  for _ in range(2):
    batch = next(stream)
    index = [int(i) - world.image_id('val', 0) for i in batch['image_id']]
    texts = [synthetic_source.make_record('val', i, world_cfg)['captions'][k]
             for i, k in zip(index, batch['caption_index'])]
    m = truth.truth_matrix(
        [layout.generate_scene('val', i, world_cfg) for i in index], texts)
    other = batch['image_id'][:, None] != batch['image_id'][None, :]
    true += (m & other).sum()
    pairs += other.sum()
  assert res['fn_pair_rate'] == pytest.approx(true / pairs)
  assert math.isfinite(res['itm_random_auroc'])
  # The word probe scored every whole-word shape token of these captions.
  tok = restore.load_tokenizer(workdir, cfg)
  shapes = set(word_probe.WORD_CLASSES['shape'])
  stream = iter(pipeline.make_dataset(
      validate.heldout_input(cfg.input, 'val', 16), tok, global_batch=16,
      seed=cfg.seed))
  num = sum(tok.decode([i]).strip() in shapes
            for _ in range(2) for row, m in zip(*(
                lambda b: (b['text_ids'], b['text_mask']))(next(stream)))
            for i, keep in zip(row, m) if keep)
  assert res['mlm_word_num/shape'] == num > 0
  for name in word_probe.WORD_CLASSES:
    acc = res[f'mlm_word_acc/{name}']
    assert math.isnan(acc) or 0 <= acc <= 1, name


def test_twin_mask_pairs_the_drawn_contrast_pairs_only():
  cfg = world.WorldConfig(contrast_rate=0.5)
  paired = [k for k in range(0, 40, 2) if contrast.pair('val', k, cfg)]
  single = [k for k in range(0, 40, 2) if not contrast.pair('val', k, cfg)]
  a, b = paired[:2]
  c = single[0]
  index = [a + 1, c, a, b, c + 1]  # b's twin and a's twin are absent.
  got = itm_probe.twin_mask(
      np.array([world.image_id('val', k) for k in index]), cfg, 'val')
  want = np.zeros((5, 5), bool)
  want[0, 2] = want[2, 0] = True
  np.testing.assert_array_equal(got, want)


def test_hard_neg_twin_is_the_sampling_weight_on_the_twin():
  # Entries 0 and 2 are twins. Image → text: image 0 draws text 2 with
  # 3/4, image 2 text 0 with 4/5; text → image: text 0 draws image 2 with
  # 1/4, text 2 image 0 with 1/2 (see the test above): 2.3 of 6 negatives.
  twins = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]], bool)
  probe = dataclasses.replace(_probe([1, 2, 3], _TRUTH), twins=twins)
  per_batch = [{'itm_random_logits': _logits(np.zeros(9)),
                'itm_sim_i2t': _SIM_I2T, 'itm_sim_t2i': _SIM_T2I}]
  got = itm_probe.itm_probe_metrics(per_batch, [probe])
  assert got['hard_neg_twin'] == pytest.approx(2.3 / 6)
  assert got['twin_in_batch'] == pytest.approx(2 / 3)
  assert got['fn_hard_share'] == pytest.approx((1.55 + 1.25) / 6)
  # Without contrast pairs there is no twin figure.
  got = itm_probe.itm_probe_metrics(per_batch, [_probe([1, 2, 3], _TRUTH)])
  assert 'hard_neg_twin' not in got and 'twin_in_batch' not in got


def test_step_zero_is_the_runs_start_with_its_pretrained_tower(tmp_path):
  """Step 0 of a run that starts from a pretrained tower (the labelled
  stage's) has that tower, not a fresh one; a kept checkpoint 0 wins."""
  config = tiny_test_config()
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  rules = [tuple(r) for r in config.sharding_rules]
  _, _, specs = train_state.abstract_model(config.model, rules)
  other = train_state.init_params(config.model, 123,
                                  sharding.named(mesh, specs))
  tower = {k: np.asarray(v) for k, v in weights_common.flatten(
      jax.device_get(other)).items() if k.startswith('vision/')}
  np.savez(tmp_path / 'tower.npz', **tower)
  config.model.init.vision = str(tmp_path / 'tower.npz')
  run = types.SimpleNamespace(config=config, rules=rules, mesh=mesh,
                              kept_steps=[6], at_step=None)
  got = weights_common.flatten(jax.device_get(validate._params_at(run, 0)))
  fresh = weights_common.flatten(jax.device_get(train_state.init_params(
      config.model, int(config.seed), sharding.named(mesh, specs))))
  for k, v in got.items():
    want = tower[k] if k in tower else fresh[k]
    np.testing.assert_array_equal(v, want, err_msg=k)
  assert any(not np.array_equal(tower[k], fresh[k]) for k in tower)
  kept = types.SimpleNamespace(params='checkpoint 0')
  run = types.SimpleNamespace(config=config, kept_steps=[0, 6],
                              at_step=lambda step: kept)
  assert validate._params_at(run, 0) == 'checkpoint 0'
