"""A tiny encoder, tokenizer and image set for the probing tests.

A tiny NNX module stands in for (vision tower + resampler): ``vision`` maps
4x4 patches of an 8x8 image (larger ones are block-averaged to 8x8 first) to
tokens, ``resampler`` reads them with two learned queries plus the mean text
embedding and returns the ``resampler_queries`` tap. The labels (is the
bright square on the left; where the square is) are functions of the image,
so a probe can learn them.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from vlg.models import layers
from vlg.projects.probing import taps
from vlg.projects.probing import tasks
from vlg.projects.probing import train


class Resampler(nnx.Module):

  def __init__(self, rngs):
    self.queries = layers.make_param(rngs, layers.normal_init(0.5), (2, 8),
                                     ('queries', 'embed'))
    self.text = layers.make_param(rngs, layers.normal_init(0.5), (50, 8),
                                  ('vocab', 'embed'))
    self.proj = layers.Dense(8, 8, ('embed', 'mlp'), rngs=rngs)

  def __call__(self, tokens, text_ids, text_mask):
    m = text_mask.astype(jnp.float32)[..., None]
    text = (self.text[...][text_ids] * m).sum(1) / m.sum(1)
    att = jax.nn.softmax(jnp.einsum('qd,bnd->bqn', self.queries[...], tokens))
    return {'resampler_queries': self.proj(
        jnp.einsum('bqn,bnd->bqd', att, tokens) + text[:, None])}


class Stub(nnx.Module):

  def __init__(self, rngs):
    self.vision = layers.Dense(48, 8, ('embed', 'mlp'),
                               kernel_init=layers.normal_init(0.2), rngs=rngs)
    self.resampler = Resampler(rngs)

  def __call__(self, batch):
    x = batch['image'].astype(jnp.float32) / 255.0
    b, side = x.shape[:2]
    if side != 8:  # E.g. the synthetic sets' 48 px: block means to 8x8.
      x = x.reshape(b, 8, side // 8, 8, side // 8, 3).mean((2, 4))
    patches = x.reshape(b, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5)
    tokens = jnp.tanh(self.vision(patches.reshape(b, 4, 48)))
    return self.resampler(tokens, batch['text_ids'], batch['text_mask'])


class Tokenizer:
  fingerprint = 'stub'

  def encode(self, text, max_len):
    ids = np.zeros(max_len, np.int32)
    words = text.split()[:max_len - 1]
    ids[0] = 2
    ids[1:len(words) + 1] = [5 + sum(map(ord, w)) % 45 for w in words]
    mask = (np.arange(max_len) <= len(words)).astype(np.int32)
    return ids, mask


def encoder():
  with nnx.use_eager_sharding(False):
    model = Stub(nnx.Rngs(0))
  graphdef, state = nnx.split(model, nnx.Param)
  return train.Encoder(
      graphdef=graphdef, params=nnx.to_pure_dict(state),
      tap_fn=lambda m, b, names, rngs: taps.resampler_taps(m(b), names),
      cache_id='stub@0')


def examples(root, n, seed, kind):
  """Images with a bright 4x4 square; binary label: square on the left."""
  rng = np.random.RandomState(seed)
  os.makedirs(root, exist_ok=True)
  out = []
  for i in range(n):
    img = rng.randint(0, 60, (8, 8, 3)).astype(np.uint8)
    r, c = rng.randint(0, 5, 2)
    img[r:r + 4, c:c + 4] = 250
    path = os.path.join(root, f'{seed}_{i}.png')
    Image.fromarray(img).save(path)
    target = ((c + 2) / 8, (r + 2) / 8, 0.5, 0.5) if kind == 'box' else (
        float(c + 2 <= 4),)
    out.append(tasks.ProbeExample(image=path, text=f'the square {i % 3}',
                                  target=target, group=path,
                                  meta={'category': int(c < 2)}))
  return out


def splits(root):
  """Binary and box train/val/test splits of 24/12/12 images under root."""
  return {kind: {'train': examples(root, 24, 1, kind),
                 'val': examples(root, 12, 2, kind),
                 'test': examples(root, 12, 3, kind)}
          for kind in ('binary', 'box')}


def inputs():
  return train.Inputs(Tokenizer(), resolution=8, max_text_len=6)
