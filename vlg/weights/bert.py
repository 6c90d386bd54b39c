"""BERT weights in Hugging Face's PyTorch layout (``bert-base-uncased``,
ALBEF's xbert ``text_encoder``) → vlg's ``text`` subtree.

BERT layer ``i`` becomes ``text/layers/i`` for ``i < text_layers`` and
``text/fusion/(i - text_layers)`` after, as ALBEF splits its 12-layer BERT
at ``fusion_layer = 6``. Hugging Face names and their vlg places:

  embeddings.word_embeddings            → text/embeddings/word
  embeddings.position_embeddings        → text/embeddings/position, plus
  + token_type_embeddings[0]              row 0 of the token-type table
                                          (vlg has no token types; ALBEF
                                          always uses type 0)
  embeddings.LayerNorm                  → text/embeddings/norm
  encoder.layer.i.attention.self.{query,key,value}, .output.dense
                                        → …/attn/{query,key,value,out}
  encoder.layer.i.attention.output.LayerNorm → …/attn_norm
  encoder.layer.i.crossattention.*      → …/cross, …/cross_norm (xbert only)
  encoder.layer.i.intermediate.dense, output.dense → …/mlp/fc1, fc2
  encoder.layer.i.output.LayerNorm      → …/mlp_norm
  cls.predictions.transform.dense / .LayerNorm, cls.predictions.bias
                                        → text/mlm_head/dense, norm, bias

The MLM decoder is tied to the word embeddings in vlg; a checkpoint whose
``cls.predictions.decoder.weight`` differs from them is refused (it would
silently change the model). Old checkpoints name LayerNorm parameters
``gamma``/``beta``; both spellings are read. Hugging Face's Flax BERT
(``flax_model.msgpack``) is mapped to these names first (:func:`from_flax`). Plain BERT has no
cross-attention: starting a vlg model from BERT leaves the fusion layers'
``cross``/``cross_norm`` freshly initialised, as ALBEF does.
"""

from __future__ import annotations

import numpy as np

from vlg.weights import common

# Present in BERT checkpoints, unused by vlg (ALBEF builds BERT without the
# pooler; NSP is not an ALBEF objective).
SKIPPED_SUFFIXES = ('pooler.dense.weight', 'pooler.dense.bias',
                    'cls.seq_relationship.weight', 'cls.seq_relationship.bias',
                    'embeddings.position_ids')


def _ln(src: common.Source, name: str, out: str) -> common.Flat:
  return {f'{out}/scale': src.get(f'{name}.weight', f'{name}.gamma'),
          f'{out}/bias': src.get(f'{name}.bias', f'{name}.beta')}


def _dense(src: common.Source, name: str, out: str) -> common.Flat:
  return {f'{out}/kernel': common.linear(src.get(f'{name}.weight')),
          f'{out}/bias': src.get(f'{name}.bias')}


def _attention(src: common.Source, name: str, out: str) -> common.Flat:
  flat = {}
  for part in ('query', 'key', 'value'):
    flat.update(_dense(src, f'{name}.self.{part}', f'{out}/{part}'))
  flat.update(_dense(src, f'{name}.output.dense', f'{out}/out'))
  return flat


def find_prefix(src: common.Source) -> str:
  """'bert.' (BertForMaskedLM/PreTraining) or '' (bare BertModel)."""
  if 'bert.embeddings.word_embeddings.weight' in src:
    return 'bert.'
  if 'embeddings.word_embeddings.weight' in src:
    return ''
  raise common.WeightsError(f'{src.what}: no BERT word embeddings '
                            '(embeddings.word_embeddings.weight) found')


def num_layers(src: common.Source, prefix: str) -> int:
  """Number of BERT layers (``encoder.layer.<i>.`` indices)."""
  return common.count_indexed(src, prefix + 'encoder.layer.', 'layer')


def convert(src: common.Source, text_layers: int, *, prefix: str = 'bert.',
            head_prefix: str = 'cls.', out: str = 'text') -> common.Flat:
  """BERT (under ``prefix``) and its MLM head (under ``head_prefix``)
  → ``{out/...: array}``; layers ≥ ``text_layers`` go to ``out/fusion``."""
  p = prefix + 'embeddings.'
  position = src.get(p + 'position_embeddings.weight')
  if p + 'token_type_embeddings.weight' in src:
    position = position + src.get(p + 'token_type_embeddings.weight')[0]
  flat: common.Flat = {f'{out}/embeddings/word':
                       src.get(p + 'word_embeddings.weight'),
                       f'{out}/embeddings/position': position}
  flat.update(_ln(src, p + 'LayerNorm', f'{out}/embeddings/norm'))
  for i in range(num_layers(src, prefix)):
    n = f'{prefix}encoder.layer.{i}.'
    o = (f'{out}/layers/{i}' if i < text_layers
         else f'{out}/fusion/{i - text_layers}')
    flat.update(_attention(src, n + 'attention', f'{o}/attn'))
    flat.update(_ln(src, n + 'attention.output.LayerNorm', f'{o}/attn_norm'))
    if n + 'crossattention.self.query.weight' in src:
      flat.update(_attention(src, n + 'crossattention', f'{o}/cross'))
      flat.update(_ln(src, n + 'crossattention.output.LayerNorm',
                      f'{o}/cross_norm'))
    flat.update(_dense(src, n + 'intermediate.dense', f'{o}/mlp/fc1'))
    flat.update(_dense(src, n + 'output.dense', f'{o}/mlp/fc2'))
    flat.update(_ln(src, n + 'output.LayerNorm', f'{o}/mlp_norm'))
  h = head_prefix + 'predictions.'
  if h + 'transform.dense.weight' in src:
    flat.update(_dense(src, h + 'transform.dense', f'{out}/mlm_head/dense'))
    flat.update(_ln(src, h + 'transform.LayerNorm', f'{out}/mlm_head/norm'))
    flat[f'{out}/mlm_head/bias'] = src.get(h + 'bias')
    if h + 'decoder.weight' in src:
      dec = src.get(h + 'decoder.weight')
      if not np.array_equal(dec, flat[f'{out}/embeddings/word']):
        raise common.WeightsError(
            f'{src.what}: {h}decoder.weight differs from the word '
            'embeddings; vlg ties the MLM decoder to them')
    if h + 'decoder.bias' in src:
      if not np.array_equal(src.get(h + 'decoder.bias'),
                            flat[f'{out}/mlm_head/bias']):
        raise common.WeightsError(f'{src.what}: {h}decoder.bias differs '
                                  f'from {h}bias')
  return flat


def is_flax(arrays: dict[str, np.ndarray]) -> bool:
  """Whether ``arrays`` is Hugging Face's Flax BERT (``flax_model.msgpack``
  read by ``files.read``: '/'-joined names, ``kernel``/``embedding``/
  ``scale`` leaves)."""
  return any(k.endswith('embeddings/word_embeddings/embedding')
             for k in arrays)


def from_flax(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hugging Face's Flax BERT names → its PyTorch names and layouts:
  '/' → '.', ``kernel`` [in, out] → ``weight`` [out, in], ``embedding`` and
  ``scale`` → ``weight``. The two libraries name every module alike, so
  the rest of this module applies unchanged."""
  out = {}
  for name, value in arrays.items():
    *path, leaf = name.split('/')
    value = np.asarray(value)
    if leaf == 'kernel':
      if value.ndim != 2:
        raise common.WeightsError(f'Flax BERT: {name} is {value.shape}, '
                                  'not a 2-D Dense kernel')
      leaf, value = 'weight', np.ascontiguousarray(value.T)
    elif leaf in ('embedding', 'scale'):
      leaf = 'weight'
    out['.'.join(path + [leaf])] = value
  return out


def skipped_keys(src: common.Source) -> list[str]:
  return sorted(n for n in src.arrays if n.endswith(SKIPPED_SUFFIXES))


def load_tower(arrays: dict[str, np.ndarray], target: dict, text_layers: int,
               *, what: str = 'BERT checkpoint'
               ) -> tuple[dict, common.Summary]:
  """A Hugging Face BERT state dict into the ``text`` subtree of ``target``
  (a whole-model parameter tree). Cross-attention of the fusion layers
  stays freshly initialised; so does the MLM head if the checkpoint has
  none (a bare ``BertModel``)."""
  if is_flax(arrays):
    arrays = from_flax(arrays)
  src = common.Source(arrays, what)
  flat = convert(src, text_layers, prefix=find_prefix(src))
  skipped = skipped_keys(src)
  src.check_all_used(skipped)
  # The fusion layers' cross-attention ('…/cross' also covers
  # '…/cross_norm') and, for a bare BertModel, the MLM head stay fresh.
  fresh_ok = sorted({p.rsplit('/cross', 1)[0] + '/cross'
                     for p in common.flatten(target)
                     if p.startswith('text/fusion/') and '/cross' in p})
  if 'text/mlm_head/bias' not in flat:
    fresh_ok.append('text/mlm_head/')
  return common.merge(target, flat, under='text/', fresh_ok=fresh_ok,
                      what=what, skipped=skipped)
