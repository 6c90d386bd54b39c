"""Tests for the factory defaults of vlg/evaluators/common.py."""

import ml_collections
import pytest

from vlg.evaluators import common


def _config(**fields):
  c = ml_collections.ConfigDict(dict(batch_size=16, input=dict(resolution=64)))
  c.update(fields)
  return c


def test_run_defaults_fall_back_to_the_train_batch_and_30_tokens():
  assert common.run_defaults(_config()) == dict(
      resolution=64, max_text_len=30, batch_size=16)


def test_run_defaults_read_the_eval_fields():
  got = common.run_defaults(_config(eval_batch_size=48, eval_max_text_len=40))
  assert got == dict(resolution=64, max_text_len=40, batch_size=48)


def test_run_defaults_name_a_missing_resolution():
  c = ml_collections.ConfigDict(dict(batch_size=16, input=dict()))
  with pytest.raises(AttributeError, match='resolution'):
    common.run_defaults(c)
