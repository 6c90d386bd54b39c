"""X-VLM, ReALBEF and ReX-VLM train end to end with every part's metrics."""

import numpy as np
import pytest

from vlg import recipes
from vlg import train
from vlg import restore
from vlg import writers
from vlg.data import pipeline
from vlg.objectives import pretrain
from vlg.tools import validate

from test_train import shrink_for_tests


def tiny_family_config(family):
  """A family's tiny config shrunk so a step compiles in seconds."""
  c = shrink_for_tests(recipes.family_config(family, 'tiny,evals=False'))
  for part in c.input.parts.values():
    part.batch_size = 8
  if 'vsg' in c.input.parts:
    c.input.parts.vsg.max_text_len = 40
  c.batch_size = 8
  c.queue_size = 16
  c.total_steps = 3
  c.ckpt_steps = 3
  c.log_training_steps = 1
  c.optim.warmup_steps = 1
  return c


EXPECTED = {
    'rexvlm': ('train/box_itc_loss', 'train/box_itm_loss',
               'train/box_mlm_loss', 'train/bbox_loss', 'train/giou_loss',
               'train/box_mean_iou', 'train/vsg_itc_loss', 'train/vsg_itm_loss',
               'train/vsg_mlm_loss', 'train/mrc_loss', 'train/mrc_acc',
               'train/mrc_majority_rate'),
}


# One compile (CI time): ReX-VLM runs every part and X-VLM's in-batch
# caption losses; ReALBEF's momentum-distilled captions are the ALBEF step
# that tests/test_train.py trains, plus the same parts.
@pytest.mark.parametrize('family', sorted(EXPECTED))
def test_family_trains_and_logs_every_part(family, tmp_path, fast_compile):
  cfg = tiny_family_config(family)
  workdir = str(tmp_path / family)
  train.train_and_evaluate(cfg, workdir)
  last = [r for r in writers.read_metrics(workdir) if 'train/loss' in r][-1]
  assert last['step'] == 3
  for key in EXPECTED[family] + ('train/loss', 'train/itc_loss'):
    assert key in last, key
    assert np.isfinite(last[key]), key
  # The total is the caption loss plus the ratio-weighted parts.
  ratios = pretrain.part_ratios(cfg)
  want = last['train/caption_loss']
  if 'entity' in ratios:
    want += ratios['entity'] * last['train/entity_loss']
  if 'vsg' in ratios:
    want += ratios['vsg'] * last['train/vsg_loss']
  if 'mrc' in ratios:
    want += ratios['mrc'] * last['train/mrc_loss']
  assert last['train/loss'] == pytest.approx(want, rel=1e-4)
  _check_heldout_validation(cfg, workdir)


def _check_heldout_validation(cfg, workdir):
  """vlg.tools.validate on the trained run: the held-out batch it reads is
  the val split's, rebuilt here, and its results reach metrics.jsonl."""
  got = validate.validate(workdir, steps=[0, 3], batches=1, batch_size=8,
                          write=True, log=lambda line: None)
  assert sorted(got) == [0, 3]
  batch = next(iter(pipeline.make_dataset(
      validate.heldout_input(cfg.input, 'val', 8),
      restore.load_tokenizer(workdir, cfg), global_batch=8, seed=cfg.seed)))
  labels = batch['mrc_label'][batch['mrc_valid'] > 0]
  for step, res in got.items():
    assert res['box_num'] == batch['ent_is_box'].sum() > 0, step
    assert res['mrc_num'] == labels.size > 0, step
    assert res['mrc_majority_rate'] == validate.majority_rate(labels)
    assert res['mrc_chance'] == 1 / cfg.model.mrc_classes
    for key in ('box_mean_iou', 'box_acc50', 'mrc_acc', 'itm_acc'):
      assert 0 <= res[key] <= 1, (step, key)
    assert np.isfinite(res['loss']) and np.isfinite(res['giou_loss'])
  # Step 0 is the model at initialisation: three steps of training moved
  # the held-out loss.
  assert got[0]['loss'] != pytest.approx(got[3]['loss'], rel=1e-4)
  curves = writers.metric_curves(workdir)
  assert sorted(curves['heldout/mrc_acc']) == [0, 3]
  assert curves['heldout/box_mean_iou'][3] == pytest.approx(
      got[3]['box_mean_iou'])


def test_parts_must_fit_the_model():
  cfg = tiny_family_config('xvlm')
  cfg.model.box_head = False
  with pytest.raises(ValueError, match='box_head'):
    train.check_parts(cfg)
  cfg = tiny_family_config('realbef')
  cfg.model.mrc_classes = 3
  with pytest.raises(ValueError, match='mrc_classes'):
    train.check_parts(cfg)
  cfg = tiny_family_config('rexvlm')
  cfg.input.parts.entity.patch_size = 16
  with pytest.raises(ValueError, match='patch_size'):
    train.check_parts(cfg)
