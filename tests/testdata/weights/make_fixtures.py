"""Writes the reference fixtures of tests/weights/ from the reference code.

Not run in CI (CI has no PyTorch): the tests read what this script stored.
It needs torch, timm and transformers in a separate environment and
ALBEF's public code (github.com/salesforce/ALBEF, ``models/``) checked out
somewhere; nothing of ALBEF, timm or Hugging Face is copied into vlg::

  python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install torch timm \
      'transformers<5'
  git clone https://github.com/salesforce/ALBEF /tmp/ALBEF
  # The synthetic captions bert_synth/ is trained on, written with vlg:
  PYTHONPATH=.:tests python -c "from test_train import tiny_test_config; \
      from vlg.data import pipeline; open('/tmp/captions.txt', 'w').write( \
      '\\n'.join(pipeline.training_texts(tiny_test_config().input, 3000)))"
  /tmp/refenv/bin/python tests/testdata/weights/make_fixtures.py \
      --albef=/tmp/ALBEF --captions=/tmp/captions.txt \
      --out=tests/testdata/weights

The stored files were made with torch 2.14.1, timm 1.0.31, transformers
4.57.6 and tokenizers 0.22.2 (ALBEF's ``xbert.py`` is for transformers 4.8:
two renamed imports are shimmed below, nothing of its computation).

Each model is built at a tiny size with random weights (every parameter,
LayerNorms and biases included, perturbed away from its initial value so
that a mis-mapped bias or scale shows), run on fixed inputs, and stored as

* ``albef_tiny.pth``: ALBEF's ``state_dict`` saved by ``torch.save`` as in
  its ``Pretrain.py`` (``{'model': ..., 'config': ...}``), online and
  momentum weights (different) and queues; ``albef_tiny_io.npz``: inputs
  (uint8 images, token ids, mask), the draws of the forward pass (masked
  ids, MLM labels, hard negatives) and its outputs (features, ITC
  similarities, ITM logits, MLM logits of the online and momentum models,
  the three losses);
* ``deit_tiny.pth`` (timm ``VisionTransformer``, DeiT's ``{'model': ...}``
  layout) and ``deit_tiny_io.npz``: tokens after the final LayerNorm at the
  training resolution and at a larger one (position embeddings resized by
  ALBEF's ``interpolate_pos_embed``);
* ``bert_tiny_flax.msgpack`` and ``bert_tiny_flax_io.npz``: the same BERT
  as transformers' ``FlaxBertForPreTraining`` (its own conversion and
  outputs);
* ``augreg_tiny.npz`` (the AugReg layout of google-research/
  vision_transformer, random values) and ``augreg_tiny_io.npz``: tokens of
  timm's ViT after timm's own ``.npz`` loader read that file;
* ``bert_synth/`` (with ``--captions``): a tiny BERT folder trained on the
  synthetic world's captions, and ``wordpiece_io.npz``: ids of
  transformers' ``BertTokenizer`` with its vocabulary;
* ``reader_cases*.pth`` and ``reader_cases_expected.npz``: strided and
  offset views, several dtypes and a scalar, in the zip and the legacy
  (pre-1.6) format, for the restricted reader;
* ``bert_tiny.safetensors`` (Hugging Face ``BertForPreTraining``, written by
  ``save_pretrained``) and ``bert_tiny_io.npz``: last hidden states and MLM
  logits.
"""

import argparse
import json
import os
import sys
import tempfile
import types
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def perturb(module, seed):
  """Every parameter += noise (LayerNorm weights around 1), deterministic."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if name.endswith(('LayerNorm.weight', 'norm1.weight', 'norm2.weight',
                        'norm.weight')):
        p.copy_(1.0 + 0.1 * noise)
      elif p.ndim <= 1:
        p.add_(0.05 * noise)
      else:
        p.copy_(0.15 * noise)


def to_pixels(images_uint8):
  """[B, H, W, 3] uint8 → ALBEF's normalised [B, 3, H, W] (CLIP mean/std)."""
  x = torch.from_numpy(images_uint8).float() / 255.0
  x = (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
  return x.permute(0, 3, 1, 2).contiguous()


def text_batch(rng, batch, length, vocab, cls_id=1, first=5):
  ids = rng.randint(first, vocab, size=(batch, length)).astype(np.int64)
  ids[:, 0] = cls_id
  lengths = np.linspace(length, length // 2, batch).astype(int)
  mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
  ids[mask == 0] = 0
  return ids, mask


def make_albef(albef_dir, out):
  sys.path.insert(0, albef_dir)
  import transformers.modeling_utils as mu  # noqa: E402
  import transformers.pytorch_utils as pu  # noqa: E402
  # ALBEF's xbert imports these from modeling_utils (transformers 4.8).
  for n in ('apply_chunking_to_forward', 'find_pruneable_heads_and_indices',
            'prune_linear_layer'):
    if not hasattr(mu, n):
      setattr(mu, n, getattr(pu, n))
  import transformers.file_utils as fu  # noqa: E402
  # Its docstring decorator's signature changed after 4.8; docs only.
  fu.add_code_sample_docstrings = lambda *a, **k: (lambda f: f)
  from models import model_pretrain  # noqa: E402
  from models import xbert  # noqa: E402

  sizes = dict(vision_width=32, vision_depth=2, vision_heads=2, patch_size=8,
               image_size=32, text_width=32, text_layers=2, fusion_layers=2,
               text_heads=2, text_mlp=64, vocab_size=100, max_positions=24,
               embed_dim=16, queue_size=8)
  real_vit = model_pretrain.VisionTransformer

  def small_vit(**kw):
    kw.update(embed_dim=sizes['vision_width'], depth=sizes['vision_depth'],
              num_heads=sizes['vision_heads'],
              patch_size=sizes['patch_size'])
    return real_vit(**kw)

  model_pretrain.VisionTransformer = small_vit
  # No download: a fresh BERT of the given config (then perturbed).
  xbert.BertForMaskedLM.from_pretrained = classmethod(
      lambda cls, name, config: cls(config))
  model_pretrain.concat_all_gather = lambda t: t  # one process
  bert_config = dict(
      architectures=['BertForMaskedLM'], attention_probs_dropout_prob=0.0,
      hidden_act='gelu', hidden_dropout_prob=0.0,
      hidden_size=sizes['text_width'], initializer_range=0.02,
      intermediate_size=sizes['text_mlp'], layer_norm_eps=1e-12,
      max_position_embeddings=sizes['max_positions'], model_type='bert',
      num_attention_heads=sizes['text_heads'],
      num_hidden_layers=sizes['text_layers'] + sizes['fusion_layers'],
      pad_token_id=0, type_vocab_size=2, vocab_size=sizes['vocab_size'],
      fusion_layer=sizes['text_layers'], encoder_width=sizes['vision_width'])
  tmp = tempfile.mkdtemp()
  with open(os.path.join(tmp, 'config_bert.json'), 'w') as f:
    json.dump(bert_config, f)
  config = dict(mlm_probability=0.15, embed_dim=sizes['embed_dim'],
                image_res=sizes['image_size'],
                vision_width=sizes['vision_width'],
                bert_config=os.path.join(tmp, 'config_bert.json'), temp=0.1,
                queue_size=sizes['queue_size'],
                # momentum 1: the forward's momentum update keeps the stored
                # momentum weights, so vlg's EMA must equal them.
                momentum=1.0)
  tokenizer = types.SimpleNamespace(pad_token_id=0, cls_token_id=1,
                                    mask_token_id=3)
  torch.manual_seed(0)
  model = model_pretrain.ALBEF(text_encoder='bert-base-uncased',
                               tokenizer=tokenizer, config=config,
                               init_deit=False)
  perturb(model, seed=1)
  with torch.no_grad():
    model.temp.fill_(0.1)
    q = torch.randn(model.image_queue.shape, generator=torch.Generator()
                    .manual_seed(2))
    model.image_queue.copy_(F.normalize(q, dim=0))
    q = torch.randn(model.text_queue.shape, generator=torch.Generator()
                    .manual_seed(3))
    model.text_queue.copy_(F.normalize(q, dim=0))
  model.eval()
  sd = {k: v.clone() for k, v in model.state_dict().items()}
  torch.save({'model': sd, 'config': {k: v for k, v in config.items()
                                      if k != 'bert_config'}, 'epoch': 0},
             os.path.join(out, 'albef_tiny.pth'))

  rng = np.random.RandomState(0)
  b, length = 4, 12
  images = rng.randint(0, 256, size=(b, 32, 32, 3)).astype(np.uint8)
  ids, mask = text_batch(rng, b, length, sizes['vocab_size'])
  captured, draws = {}, []

  def hook(name):
    def fn(mod, inp, outp):
      captured.setdefault(name, outp.detach().clone())
    return fn

  for name in ('visual_encoder', 'vision_proj', 'text_proj', 'vision_proj_m',
               'text_proj_m', 'itm_head'):
    getattr(model, name).register_forward_hook(hook(name))
  model.text_encoder.cls.register_forward_hook(hook('mlm_logits'))
  model.text_encoder_m.cls.register_forward_hook(hook('mlm_logits_m'))
  real_multinomial = torch.multinomial

  def multinomial(*args, **kw):
    r = real_multinomial(*args, **kw)
    draws.append(int(r.item()))
    return r

  real_mask = model.mask

  def mask_fn(*args, **kw):
    ids_m, labels = real_mask(*args, **kw)
    captured['mlm_ids'], captured['mlm_labels'] = ids_m.clone(), labels.clone()
    return ids_m, labels

  model.mask = mask_fn
  torch.multinomial = multinomial
  torch.manual_seed(4)
  text = types.SimpleNamespace(input_ids=torch.from_numpy(ids),
                               attention_mask=torch.from_numpy(mask))
  with torch.no_grad():
    loss_mlm, loss_ita, loss_itm = model(to_pixels(images), text, alpha=0.4)
  torch.multinomial = real_multinomial
  assert len(draws) == 2 * b, draws
  image_feat = F.normalize(captured['vision_proj'], dim=-1)
  text_feat = F.normalize(captured['text_proj'], dim=-1)
  image_feat_m = F.normalize(captured['vision_proj_m'], dim=-1)
  text_feat_m = F.normalize(captured['text_proj_m'], dim=-1)
  # The forward's own similarities (model_pretrain.py), with the queues as
  # stored (the forward enqueued afterwards).
  text_all = torch.cat([text_feat_m.t(), sd['text_queue']], dim=1)
  image_all = torch.cat([image_feat_m.t(), sd['image_queue']], dim=1)
  np.savez_compressed(
      os.path.join(out, 'albef_tiny_io.npz'),
      sizes=json.dumps(sizes), alpha=0.4, images=images, text_ids=ids,
      text_mask=mask, mlm_ids=captured['mlm_ids'].numpy(),
      mlm_labels=captured['mlm_labels'].numpy(),
      neg_image=np.array(draws[:b]), neg_text=np.array(draws[b:]),
      image_embeds=captured['visual_encoder'].numpy(),
      image_feat=image_feat.numpy(), text_feat=text_feat.numpy(),
      image_feat_m=image_feat_m.numpy(), text_feat_m=text_feat_m.numpy(),
      sim_i2t=(image_feat @ text_all / 0.1).numpy(),
      sim_t2i=(text_feat @ image_all / 0.1).numpy(),
      itm_logits=captured['itm_head'].numpy(),
      mlm_logits=captured['mlm_logits'].numpy(),
      mlm_logits_m=captured['mlm_logits_m'].numpy(),
      loss_itc=loss_ita.item(), loss_itm=loss_itm.item(),
      loss_mlm=loss_mlm.item())
  sys.path.remove(albef_dir)
  return model_pretrain


def make_deit(out, interpolate_pos_embed):
  import timm.models.vision_transformer as tvit  # noqa: E402
  kw = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0,
            qkv_bias=True, num_classes=10)
  torch.manual_seed(0)
  model = tvit.VisionTransformer(img_size=32, **kw)
  perturb(model, seed=5)
  model.eval()
  torch.save({'model': model.state_dict()}, os.path.join(out, 'deit_tiny.pth'))
  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
  images48 = rng.randint(0, 256, size=(2, 48, 48, 3)).astype(np.uint8)
  big = tvit.VisionTransformer(img_size=48, **kw)
  sd = dict(model.state_dict())
  sd['pos_embed'] = interpolate_pos_embed(sd['pos_embed'], big)
  big.load_state_dict(sd)
  big.eval()
  with torch.no_grad():
    tokens = model.forward_features(to_pixels(images))
    tokens48 = big.forward_features(to_pixels(images48))
  np.savez_compressed(os.path.join(out, 'deit_tiny_io.npz'), images=images,
                      tokens=tokens.numpy(), images48=images48,
                      tokens48=tokens48.numpy(),
                      pos_embed48=sd['pos_embed'].numpy())


def make_augreg(out):
  """A random ViT in the AugReg ``.npz`` layout (google-research/
  vision_transformer), loaded by timm's own npz loader (the reference for
  the layout) and run on [-1, 1] pixels (AugReg's normalisation)."""
  import timm.models.vision_transformer as tvit  # noqa: E402
  rng = np.random.RandomState(3)
  d, h, p, mlp, grid = 32, 2, 8, 128, 4

  def r(*shape, scale=0.15, mean=0.0):
    return (mean + scale * rng.randn(*shape)).astype(np.float32)

  w = {'cls': r(1, 1, d), 'embedding/kernel': r(p, p, 3, d),
       'embedding/bias': r(d, scale=0.05),
       'Transformer/posembed_input/pos_embedding': r(1, 1 + grid * grid, d),
       'Transformer/encoder_norm/scale': r(d, scale=0.1, mean=1.0),
       'Transformer/encoder_norm/bias': r(d, scale=0.05),
       'head/kernel': r(d, 10), 'head/bias': r(10, scale=0.05)}
  for i in range(2):
    b = f'Transformer/encoderblock_{i}/'
    for ln in ('LayerNorm_0', 'LayerNorm_2'):
      w[f'{b}{ln}/scale'] = r(d, scale=0.1, mean=1.0)
      w[f'{b}{ln}/bias'] = r(d, scale=0.05)
    a = f'{b}MultiHeadDotProductAttention_1/'
    for n in ('query', 'key', 'value'):
      w[f'{a}{n}/kernel'] = r(d, h, d // h)
      w[f'{a}{n}/bias'] = r(h, d // h, scale=0.05)
    w[f'{a}out/kernel'] = r(h, d // h, d)
    w[f'{a}out/bias'] = r(d, scale=0.05)
    w[f'{b}MlpBlock_3/Dense_0/kernel'] = r(d, mlp)
    w[f'{b}MlpBlock_3/Dense_0/bias'] = r(mlp, scale=0.05)
    w[f'{b}MlpBlock_3/Dense_1/kernel'] = r(mlp, d)
    w[f'{b}MlpBlock_3/Dense_1/bias'] = r(d, scale=0.05)
  path = os.path.join(out, 'augreg_tiny.npz')
  np.savez(path, **w)
  model = tvit.VisionTransformer(img_size=32, patch_size=p, embed_dim=d,
                                 depth=2, num_heads=h, mlp_ratio=4.0,
                                 qkv_bias=True, num_classes=10)
  with torch.no_grad():
    tvit._load_weights(model, path)  # pylint: disable=protected-access
  model.eval()
  images = rng.randint(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
  x = torch.from_numpy(images).float() / 127.5 - 1.0
  with torch.no_grad():
    tokens = model.forward_features(x.permute(0, 3, 1, 2).contiguous())
  np.savez_compressed(os.path.join(out, 'augreg_tiny_io.npz'), images=images,
                      tokens=tokens.numpy())


def make_bert(out):
  import transformers  # noqa: E402
  cfg = transformers.BertConfig(
      vocab_size=100, hidden_size=32, num_hidden_layers=4,
      num_attention_heads=2, intermediate_size=64, max_position_embeddings=24,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(cfg)
  perturb(model, seed=6)
  model.eval()
  tmp = tempfile.mkdtemp()
  model.save_pretrained(tmp, safe_serialization=True)
  import shutil  # noqa: E402
  shutil.copy(os.path.join(tmp, 'model.safetensors'),
              os.path.join(out, 'bert_tiny.safetensors'))
  rng = np.random.RandomState(2)
  ids, mask = text_batch(rng, 3, 10, 100, cls_id=1)
  with torch.no_grad():
    o = model(input_ids=torch.from_numpy(ids),
              attention_mask=torch.from_numpy(mask),
              output_hidden_states=True)
  np.savez_compressed(os.path.join(out, 'bert_tiny_io.npz'), text_ids=ids,
                      text_mask=mask, hidden=o.hidden_states[-1].numpy(),
                      mlm_logits=o.prediction_logits.numpy())
  return tmp


def make_flax_bert(out, pt_folder):
  """The same BERT as Hugging Face's Flax model (converted by transformers
  from the PyTorch folder), saved as ``flax_model.msgpack``, with the Flax
  model's own outputs on the same inputs."""
  import transformers  # noqa: E402
  model = transformers.FlaxBertForPreTraining.from_pretrained(
      pt_folder, from_pt=True)
  tmp = tempfile.mkdtemp()
  model.save_pretrained(tmp)
  os.replace(os.path.join(tmp, 'flax_model.msgpack'),
             os.path.join(out, 'bert_tiny_flax.msgpack'))
  io = np.load(os.path.join(out, 'bert_tiny_io.npz'))
  o = model(input_ids=io['text_ids'], attention_mask=io['text_mask'],
            output_hidden_states=True)
  np.savez_compressed(os.path.join(out, 'bert_tiny_flax_io.npz'),
                      hidden=np.asarray(o.hidden_states[-1]),
                      mlm_logits=np.asarray(o.prediction_logits))


def make_bert_synth(out, captions_file):
  """A tiny BERT that knows the synthetic world's captions: a WordPiece
  vocabulary trained on them (``tokenizers``) and ``BertForPreTraining``
  trained by MLM on them; saved as a Hugging Face folder (``vocab.txt``,
  ``tokenizer_config.json``, ``config.json``, ``model.safetensors``). With
  it a vlg run configured with ``model.init.text`` starts with an MLM loss
  far below ln(vocab). Also ``wordpiece_io.npz``: token ids of
  transformers' pure-Python ``BertTokenizer`` (the reference of BERT's
  tokenisation) on awkward sentences, for vlg/data/wordpiece.py."""
  import tokenizers  # noqa: E402
  import transformers  # noqa: E402
  with open(captions_file) as f:
    captions = [line.strip() for line in f if line.strip()]
  folder = os.path.join(out, 'bert_synth')
  os.makedirs(folder, exist_ok=True)
  wp = tokenizers.BertWordPieceTokenizer(lowercase=True)
  wp.train_from_iterator(captions, vocab_size=160, min_frequency=2,
                         special_tokens=['[PAD]', '[UNK]', '[CLS]', '[SEP]',
                                         '[MASK]'])
  wp.save_model(folder)
  with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
    json.dump({'do_lower_case': True}, f)
  tok = transformers.BertTokenizer(os.path.join(folder, 'vocab.txt'),
                                   do_lower_case=True)
  vocab = len(tok)
  cfg = transformers.BertConfig(
      vocab_size=vocab, hidden_size=64, num_hidden_layers=4,
      num_attention_heads=2, intermediate_size=128,
      max_position_embeddings=32, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(cfg)
  enc = tok(captions, padding='max_length', truncation=True, max_length=24,
            return_tensors='pt')
  ids_all, mask_all = enc['input_ids'], enc['attention_mask']
  opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
  special = torch.tensor(tok.all_special_ids)
  g = torch.Generator().manual_seed(8)
  model.train()
  for step in range(600):
    idx = torch.randint(0, len(captions), (64,), generator=g)
    ids, mask = ids_all[idx].clone(), mask_all[idx]
    labels = ids.clone()
    chosen = (torch.rand(ids.shape, generator=g) < 0.15) & ~torch.isin(
        ids, special)
    labels[~chosen] = -100
    r = torch.rand(ids.shape, generator=g)
    ids[chosen & (r < 0.8)] = tok.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    ids[rand] = torch.randint(5, vocab, ids.shape, generator=g)[rand]
    outp = model(input_ids=ids, attention_mask=mask)
    loss = F.cross_entropy(outp.prediction_logits.reshape(-1, vocab),
                           labels.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 100 == 0 or step == 599:
      print(f'bert_synth step {step}: MLM loss {loss.item():.3f} '
            f'(ln V = {np.log(vocab):.3f})')
  model.eval()
  model.save_pretrained(folder, safe_serialization=True)
  sentences = ['There is a LARGE purple hexagon.', 'an image of a ring [SEP] '
               'a ring left of a hexagon', 'Café, naïve résumé!!',
               'xylophone zebra qwertyuiop', '  spaced   out\ttabs\n',
               'two rings, one hexagon; 3 objects']
  ids = [tok.convert_tokens_to_ids(tok.tokenize(t)) for t in sentences]
  width = max(len(i) for i in ids)
  np.savez_compressed(
      os.path.join(out, 'wordpiece_io.npz'), sentences=np.array(sentences),
      ids=np.array([i + [-1] * (width - len(i)) for i in ids]))


def make_reader_cases(out):
  """Tensors the restricted reader must rebuild exactly: views with offsets
  and strides, several dtypes, a scalar; in the zip and legacy formats."""
  g = torch.Generator().manual_seed(7)
  base = torch.randn(5, 6, generator=g)
  tensors = {
      'transposed': base.t(),  # strides (1, 6)
      'slice': base[1:3, 2:5],  # offset 8, shares base's storage
      'base': base,
      'bf16': torch.randn(3, 2, generator=g).to(torch.bfloat16),
      'fp16': torch.randn(4, generator=g).to(torch.float16),
      'int64': torch.arange(-3, 5),
      'bool': torch.tensor([True, False, True]),
      'scalar': torch.tensor(2.5),
  }
  obj = {'state_dict': tensors, 'epoch': 3, 'note': 'plain data',
         'nested': [1.5, (2, 'x'), {'k': None}]}
  torch.save(obj, os.path.join(out, 'reader_cases.pth'))
  torch.save(obj, os.path.join(out, 'reader_cases_legacy.pth'),
             _use_new_zipfile_serialization=False)
  np.savez_compressed(
      os.path.join(out, 'reader_cases_expected.npz'),
      **{k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
         for k, v in tensors.items()})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--albef', required=True,
                      help='a checkout of github.com/salesforce/ALBEF')
  parser.add_argument('--out', default=os.path.dirname(
      os.path.abspath(__file__)))
  parser.add_argument(
      '--captions', default='',
      help='synthetic-world captions, one a line, for bert_synth/ (written '
      'with vlg: see the module docstring)')
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  model_pretrain = make_albef(os.path.abspath(args.albef), args.out)
  make_deit(args.out, model_pretrain.interpolate_pos_embed)
  pt_bert = make_bert(args.out)
  make_flax_bert(args.out, pt_bert)
  make_augreg(args.out)
  if args.captions:
    make_bert_synth(args.out, args.captions)
  make_reader_cases(args.out)


if __name__ == '__main__':
  main()
