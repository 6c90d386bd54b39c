"""vlg.tools.twin_probe: Winoground's scores on held-out contrast pairs."""

import hashlib
import itertools

import numpy as np
import pytest

from vlg.data import ops
from vlg.data import tokenizer as tok_lib
from vlg.synthetic import contrast
from vlg.synthetic import truth
from vlg.synthetic import world
from vlg.tools import twin_probe
from vlg.tools import word_probe

CFG = world.WorldConfig()


@pytest.fixture(scope='module')
def twins():
  texts = []
  for base in range(0, 200, 2):
    pair = contrast.pair('val', base, world.WorldConfig(contrast_rate=1.0))
    if pair is not None:
      texts += pair.texts[0] + pair.texts[1]
  tok = tok_lib.train_tokenizer(texts, 256, model_type='bpe')
  return tok, twin_probe.held_out_twins(CFG, tok, num=12, max_words=30,
                                        max_len=25, resolution=64)


def _val_pairs(n):
  """The first ``n`` contrast pairs of the 'val' split, every index pair
  drawn as one (what ``held_out_twins`` reads)."""
  cfg = world.WorldConfig(contrast_rate=1.0)
  pairs = (contrast.pair('val', base, cfg) for base in range(0, 10**4, 2))
  return list(itertools.islice((p for p in pairs if p is not None), n))


def test_scores_by_hand():
  aa, ab = np.array([0.9, 0.2, 0.5]), np.array([0.1, 0.3, 0.5])
  ba, bb = np.array([0.2, 0.1, 0.1]), np.array([0.8, 0.4, 0.9])
  got = twin_probe.scores_from(aa, ab, ba, bb)
  # text: pair 0 (0.9>0.1, 0.8>0.2); pair 1 fails (0.2<0.3); pair 2 ties.
  assert got['text'] == pytest.approx(1 / 3)
  # image: aa>ba and bb>ab: pairs 0 and 2 (0.5>0.1, 0.9>0.5); pair 1 0.2>0.1,
  # 0.4>0.3 too.
  assert got['image'] == pytest.approx(1.0)
  assert got['group'] == pytest.approx(1 / 3)
  assert got['pair_acc'] == pytest.approx(4 / 6)


def test_held_out_twins_are_the_worlds_pairs_with_their_own_captions(twins):
  tok, tw = twins
  assert tw.image_a.shape == (12, 64, 64, 3) == tw.image_b.shape
  assert tw.ids_a.shape == (12, 25) and set(tw.edits) <= set(contrast.EDITS)
  assert not np.array_equal(tw.image_a, tw.image_b)
  for k, pair in enumerate(_val_pairs(3)):
    ids, _ = tok.encode(ops.pre_caption(pair.texts[0][0], 30), 25)
    np.testing.assert_array_equal(tw.ids_a[k], ids)
    assert truth.is_true(pair.twin, pair.texts[0][0]) is False


def test_held_out_twins_of_chosen_edits(twins):
  tok, every = twins
  swaps = twin_probe.held_out_twins(CFG, tok, num=3, max_words=30,
                                    max_len=25, resolution=64,
                                    edits=['swap'])
  assert swaps.edits == ('swap',) * 3
  # The same pairs, in order, as the swaps among all pairs.
  first = [k for k, e in enumerate(every.edits) if e == 'swap'][:2]
  for k, j in enumerate(first):
    np.testing.assert_array_equal(swaps.ids_a[k], every.ids_a[j])
    np.testing.assert_array_equal(swaps.image_b[k], every.image_b[j])
  with pytest.raises(ValueError, match='unknown edit.*swop'):
    twin_probe.held_out_twins(CFG, tok, num=3, max_words=30, max_len=25,
                              resolution=64, edits=['swop'])



def test_held_out_twins_with_the_longest_captions(twins):
  tok, every = twins
  longest = twin_probe.held_out_twins(CFG, tok, num=4, max_words=30,
                                      max_len=25, resolution=64,
                                      caption='longest')
  assert longest.edits == every.edits[:4]
  np.testing.assert_array_equal(longest.image_a, every.image_a[:4])
  for k, pair in enumerate(_val_pairs(4)):
    for texts, ids in ((pair.texts[0], longest.ids_a[k]),
                       (pair.texts[1], longest.ids_b[k])):
      words = [len(t.split()) for t in texts]
      # By hand: the first candidate with the most words.
      text = texts[words.index(max(words))]
      np.testing.assert_array_equal(
          ids, tok.encode(ops.pre_caption(text, 30), 25)[0])
  # Some pair's longest caption is not its first: the option changes rows.
  assert not np.array_equal(longest.ids_a, every.ids_a[:4])
  with pytest.raises(ValueError, match="caption='last'"):
    twin_probe.held_out_twins(CFG, tok, num=1, max_words=30, max_len=25,
                              resolution=64, caption='last')

def _all_rows(fn):
  """A row scorer calling ``fn`` on every row at once (``BatchRunner.run``
  batches and pads; these fakes are not jittable)."""
  return lambda n, build_rows: fn(build_rows(range(n)))


def _key(image, ids):
  return hashlib.sha1(image.tobytes() + ids.tobytes()).hexdigest()


def test_a_perfect_matcher_scores_one_and_a_text_only_scorer_zero(twins):
  _, tw = twins
  own = {_key(i, t) for i, t in zip(tw.image_a, tw.ids_a)} | {
      _key(i, t) for i, t in zip(tw.image_b, tw.ids_b)}

  def oracle(batch):
    hits = [_key(i, t) in own for i, t in zip(batch['image'],
                                              batch['text_ids'])]
    return {'itm': np.asarray(hits, np.float32)}

  got = twin_probe.twin_metrics(_all_rows(oracle), tw)
  for key in ('text', 'image', 'group', 'pair_acc'):
    assert got[f'twin_itm_{key}'] == 1.0, key
  assert got['twin_num'] == 12
  assert sum(got[f'twin_num/{e}'] for e in contrast.EDITS
             if f'twin_num/{e}' in got) == 12
  assert 'twin_itc_text' not in got

  def text_only(batch):  # The same score for a caption on every image.
    return {'itc': batch['text_ids'].sum(-1) % 7 / 7.0,
            'itm': batch['text_ids'][:, 1] / 1000.0}

  got = twin_probe.twin_metrics(_all_rows(text_only), tw)
  for s in ('itm', 'itc'):
    assert got[f'twin_{s}_text'] == 0.0 and got[f'twin_{s}_image'] == 0.0


def test_binding_metrics_tell_a_binding_head_from_a_bag_of_colours(twins):
  tok, tw = twins
  colour_ids = word_probe.class_token_ids(tok)['colour']
  assert len(colour_ids) and 'recolour' in tw.edits
  originals = {hashlib.sha1(i.tobytes()).hexdigest(): t
               for i, t, e in zip(tw.image_a, tw.ids_a, tw.edits)
               if e == 'recolour'}

  def binding(batch):  # Knows which image it sees.
    out = []
    for img, ids in zip(batch['image'], batch['text_ids']):
      own = originals.get(hashlib.sha1(img.tobytes()).hexdigest())
      out.append(own if own is not None else np.where(ids == tok.mask_id,
                                                      -1, ids))
    return {'mlm_ids': np.stack(out)}

  got = twin_probe.binding_metrics(_all_rows(binding), tw, colour_ids,
                                   tok.mask_id)
  assert got['twin_mlm_colour_acc'] == 1.0
  assert got['twin_mlm_colour_acc_on_twin'] == 0.0
  masked = sum(int(np.isin(t[m > 0], colour_ids).sum())
               for t, m, e in zip(tw.ids_a, tw.mask_a, tw.edits)
               if e == 'recolour')
  assert got['twin_mlm_colour_num'] == masked > 0

  def bag_of_colours(batch):  # The same on both.
    keep = np.asarray(tw.edits) == 'recolour'
    by_text = {hashlib.sha1(w.tobytes()).hexdigest(): t for w, t in zip(
        word_probe.mask_class(tw.ids_a[keep], tw.mask_a[keep], colour_ids,
                              tok.mask_id)[0], tw.ids_a[keep])}
    return {'mlm_ids': np.stack([
        by_text[hashlib.sha1(ids.tobytes()).hexdigest()]
        for ids in batch['text_ids']])}

  got = twin_probe.binding_metrics(_all_rows(bag_of_colours), tw,
                                   colour_ids, tok.mask_id)
  assert got['twin_mlm_colour_acc'] == got['twin_mlm_colour_acc_on_twin'] == 1
