"""``vlg.tools.bench_reference`` and ``benchmarks/reference/albef_step.py``.

Without PyTorch (CI has none): the shapes JSON of a config (exact for
ALBEF tiny), configs ALBEF's step cannot run, the rounds' alternation,
ratio and min/median/max with a stand-in vlg step and a stand-in reference
script, and the errors for a missing clone or a reference without a
result. albef_step.py imports torch only to run, so its settings and
checks are tested here too. With ``VLG_ALBEF_DIR`` and
``VLG_REFERENCE_PYTHON`` set (benchmarks/reference/README.md), one test
also runs ALBEF's real step at tiny shapes.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from vlg import recipes
from vlg.tools import bench_reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'reference', 'albef_step.py')

TINY = dict(
    image_size=64, patch_size=8, vision_width=128, vision_depth=4,
    vision_heads=4, vision_mlp=512, text_width=128, text_layers=2,
    fusion_layers=2, text_heads=4, text_mlp=512, vocab_size=1024,
    max_positions=128, embed_dim=64, batch_size=16, queue_size=256,
    max_text_len=25, momentum=0.995, alpha=0.4, mlm_probability=0.15,
    temp=0.07, dropout=0.0, text_ln_eps=1e-12, lr=1e-3, weight_decay=0.02,
    b1=0.9, b2=0.999, eps=1e-8)

# A stand-in reference: prints albef_step.py's two lines, with examples/s
# taken from the file FAKE_EPS (one number a line, one line per call).
FAKE = textwrap.dedent('''\
    import json, os, sys
    path = os.environ['FAKE_EPS']
    values = open(path).read().split()
    open(path, 'w').write('\\n'.join(values[1:]))
    with open(os.environ['FAKE_LOG'], 'a') as f:
      f.write(json.dumps(sys.argv[1:]) + '\\n')
    print('some log line')
    print(json.dumps({'kind': 'model', 'params_m': 1.9}))
    print(json.dumps({'kind': 'result', 'examples_per_s': float(values[0]),
                      'matmul_flops': 5e10, 'params_m': 1.934723}))
    ''')



def _tiny():
  """Tiny ALBEF as ALBEF's code can express it: the linear patch stem (the
  recipe trains with a convolutional one)."""
  c = recipes.albef_config('tiny')
  c.model.vision_stem = 'patch'
  return c

def _albef_step():
  spec = importlib.util.spec_from_file_location('albef_step', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def clone(tmp_path):
  """A directory that passes for an ALBEF clone."""
  (tmp_path / 'ALBEF' / 'models').mkdir(parents=True)
  (tmp_path / 'ALBEF' / 'models' / 'model_pretrain.py').write_text('')
  return str(tmp_path / 'ALBEF')


def test_tiny_shapes_are_albef_tiny_exactly():
  shapes = bench_reference.reference_shapes(_tiny())
  notes = shapes.pop('notes')
  assert shapes == TINY
  assert any('queue_mask_unfilled' in n for n in notes), notes
  assert not any('dtype' in n or 'remat' in n for n in notes), notes


def test_notes_name_precision_and_remat():
  c = _tiny()
  c.model.dtype = 'bfloat16'
  c.model.remat = 'full'
  notes = bench_reference.reference_shapes(c)['notes']
  assert any('bfloat16' in n for n in notes)
  assert any('remat=full' in n for n in notes)


@pytest.mark.parametrize('family, words', [
    ('xvlm', ['entity', 'itm_head', 'momentum_distill']),
    ('realbef', ['mrc', 'vsg', 'mrc_classes']),
])
def test_other_families_are_refused(family, words):
  with pytest.raises(ValueError, match='cannot express') as e:
    bench_reference.reference_shapes(recipes.family_config(family, 'tiny'))
  for word in words:
    assert word in str(e.value)


def test_another_stem_is_refused():
  c = _tiny()
  c.model.vision_stem = 'conv'
  with pytest.raises(ValueError, match='vision_stem'):
    bench_reference.reference_shapes(c)


def test_albef_step_reads_the_json_vlg_writes(tmp_path):
  step = _albef_step()
  shapes = bench_reference.reference_shapes(_tiny())
  path = tmp_path / 'shapes.json'
  path.write_text(json.dumps(shapes))
  args = step.parse_args(['--albef=x', f'--shapes={path}', '--batch_size=8'])
  s = step.settings(args)
  # The flag wins over the file; the token ids default to BERT's.
  assert s == dict(TINY, batch_size=8, pad_id=0, cls_id=101, mask_id=103)
  bert = step.bert_config(s)
  assert (bert['num_hidden_layers'], bert['fusion_layer'],
          bert['encoder_width'], bert['hidden_dropout_prob']) == (4, 2, 128,
                                                                  0.0)


def test_albef_step_refuses_missing_unknown_and_impossible(tmp_path):
  step = _albef_step()
  with pytest.raises(ValueError, match='missing shapes'):
    step.settings(step.parse_args(['--albef=x', '--image_size=64']))
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(dict(TINY, colour=3)))
  with pytest.raises(ValueError, match='unknown keys'):
    step.settings(step.parse_args(['--albef=x', f'--shapes={bad}']))
  good = tmp_path / 'good.json'
  good.write_text(json.dumps(TINY))
  with pytest.raises(ValueError, match='queue_size must be a multiple'):
    step.settings(step.parse_args(['--albef=x', f'--shapes={good}',
                                   '--queue_size=100']))
  with pytest.raises(ValueError, match='vocab_size'):
    step.settings(step.parse_args(['--albef=x', f'--shapes={good}',
                                   '--vocab_size=50']))


def test_reference_autocast_reaches_the_script_and_is_checked(tmp_path):
  base = bench_reference.reference_command(
      'py', 'step.py', 'albef', 'shapes.json', 4, 1, 2, 2048)
  assert not any(a.startswith('--autocast') for a in base)
  cmd = bench_reference.reference_command(
      'py', 'step.py', 'albef', 'shapes.json', 4, 1, 2, 2048,
      autocast='bfloat16')
  assert cmd == base + ['--autocast=bfloat16']
  spec = importlib.util.spec_from_file_location('albef_step_ac', SCRIPT)
  step = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(step)
  assert step.parse_args(['--albef=x']).autocast == 'none'
  assert step.parse_args(['--albef=x', '--autocast=bfloat16']).autocast == (
      'bfloat16')
  proc = subprocess.run([sys.executable, SCRIPT, '--albef=x',
                         '--autocast=float16'],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "invalid choice: 'float16'" in proc.stderr


def test_albef_step_help_and_missing_clone_need_no_torch(tmp_path):
  proc = subprocess.run([sys.executable, SCRIPT, '--help'],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0 and '--vision_width' in proc.stdout
  proc = subprocess.run([sys.executable, SCRIPT, f'--albef={tmp_path}'],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and 'model_pretrain.py' in proc.stderr


def test_rounds_alternate_and_summarise(tmp_path, clone, monkeypatch):
  fake = tmp_path / 'fake_ref.py'
  fake.write_text(FAKE)
  (tmp_path / 'eps').write_text('10\n20\n40\n')
  monkeypatch.setenv('FAKE_EPS', str(tmp_path / 'eps'))
  monkeypatch.setenv('FAKE_LOG', str(tmp_path / 'log'))
  calls = []
  vlg_eps = iter([30.0, 30.0, 20.0])

  def run_vlg():
    calls.append('vlg')
    return dict(examples_per_s=next(vlg_eps), matmul_flops=6e10,
                params_m=1.934724)  # Not ALBEF's less its token types.

  original = bench_reference.run_reference

  def run_ref(cmd, timeout):
    calls.append('ref')
    return original(cmd, timeout)

  monkeypatch.setattr(bench_reference, 'run_reference', run_ref)
  lines = []
  shapes_out = tmp_path / 'shapes.json'
  rows = bench_reference.compare(
      _tiny(), clone, sys.executable, str(fake),
      rounds=3, steps=4, warmup=1, threads=2, matmul_size=2048, timeout=60,
      shapes_out=str(shapes_out), run_vlg=run_vlg, emit=lines.append)
  assert calls == ['vlg', 'ref', 'ref', 'vlg', 'vlg', 'ref']
  assert [r['ratio'] for r in rows] == [3.0, 1.5, 0.5]
  assert json.loads(shapes_out.read_text())['batch_size'] == 16
  argv = json.loads((tmp_path / 'log').read_text().splitlines()[0])
  assert argv == [f'--albef={os.path.abspath(clone)}',
                  f'--shapes={shapes_out}', '--steps=4', '--warmup=1',
                  '--threads=2', '--matmul_size=2048', '--device=cpu']
  assert ('trainable parameters: vlg 1,934,724, ALBEF 1,934,723 (DIFFER '
          'by -1 beyond the token-type table)') in lines
  round_lines = [l for l in lines if l.startswith('round ')]
  assert round_lines[0] == (
      'round 1/3 (vlg first): vlg 30.00 examples/s, ALBEF (PyTorch) 10.00 '
      'examples/s, ratio vlg/ALBEF 3.000; float32 2048^2 matmul: jax 60.0 '
      'GFLOP/s, torch 50.0 GFLOP/s')
  assert '(reference first)' in round_lines[1]
  assert lines[-3:] == [
      'ratio vlg/ALBEF over 3 round(s): min 0.500, median 1.500, max 3.000',
      'vlg examples/s over 3 round(s): min 20.000, median 30.000, '
      'max 30.000',
      'ALBEF examples/s over 3 round(s): min 10.000, median 20.000, '
      'max 40.000']


def test_missing_clone_python_or_script_are_clear(tmp_path, clone):
  config = _tiny()
  common = dict(rounds=1, steps=1, warmup=0, threads=1, matmul_size=0,
                timeout=10, run_vlg=lambda: {}, emit=lambda _: None)
  with pytest.raises(ValueError, match='no such directory; clone'):
    bench_reference.compare(config, str(tmp_path / 'nope'), sys.executable,
                            SCRIPT, **common)
  with pytest.raises(ValueError, match='not an ALBEF clone'):
    bench_reference.compare(config, str(tmp_path), sys.executable, SCRIPT,
                            **common)
  with pytest.raises(ValueError, match='--reference_python'):
    bench_reference.compare(config, clone, str(tmp_path / 'python'),
                            SCRIPT, **common)
  with pytest.raises(ValueError, match='--reference_script'):
    bench_reference.compare(config, clone, sys.executable,
                            str(tmp_path / 'x.py'), **common)


@pytest.mark.parametrize('body, match', [
    ('print("no json here")', 'no result line'),
    ('import json; print(json.dumps({"kind": "result"}))', 'no result line'),
    ('import sys; print("boom", file=sys.stderr); sys.exit(3)',
     'exited 3(.|\n)*boom'),
])
def test_a_reference_without_a_result_is_an_error(tmp_path, body, match):
  script = tmp_path / 'ref.py'
  script.write_text(body)
  with pytest.raises(RuntimeError, match=match):
    bench_reference.run_reference([sys.executable, str(script)], timeout=60)


def test_params_line_knows_the_token_type_table():
  row = dict(vlg=dict(params_m=1.934467), reference=dict(params_m=1.934723))
  line = bench_reference.params_line(row, text_width=128)
  assert line.startswith('trainable parameters: vlg 1,934,467, ALBEF '
                         '1,934,723 (equal but for ALBEF')
  assert 'n/a' in bench_reference.params_line(
      dict(vlg={}, reference=dict(params_m=1.0)), 128)


def test_parse_result_takes_the_last_result_line():
  out = '\n'.join(['{"kind": "result", "examples_per_s": 1}', 'log {',
                   '{not json', '{"kind": "model"}',
                   '{"kind": "result", "examples_per_s": 2}'])
  assert bench_reference.parse_result(out)['examples_per_s'] == 2
  assert bench_reference.parse_result('') is None


def test_rounds_must_be_positive():
  with pytest.raises(ValueError, match='--rounds'):
    next(bench_reference.alternate(0, dict, dict))


def test_help():
  proc = subprocess.run([sys.executable, '-m', 'vlg.tools.bench_reference',
                         '--help'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode in (0, 1), proc.stderr  # absl's --help exits 1.
  assert '--against_reference' in proc.stdout


@pytest.mark.skipif(
    not (os.environ.get('VLG_ALBEF_DIR') and
         os.environ.get('VLG_REFERENCE_PYTHON')),
    reason='needs VLG_ALBEF_DIR and VLG_REFERENCE_PYTHON '
           '(benchmarks/reference/README.md)')
def test_albefs_real_step_at_tiny_shapes(tmp_path):
  shapes = bench_reference.reference_shapes(_tiny())
  path = tmp_path / 'shapes.json'
  path.write_text(json.dumps(shapes))
  cmd = bench_reference.reference_command(
      os.environ['VLG_REFERENCE_PYTHON'], SCRIPT,
      os.environ['VLG_ALBEF_DIR'], str(path), steps=2, warmup=1, threads=1,
      matmul_size=256)
  r = bench_reference.run_reference(cmd, timeout=600)
  assert r['batch'] == 16 and r['examples_per_s'] > 0
  assert r['autocast'] == 'none'
  # The backward reached every trainable tensor; the queue took 3 batches.
  assert r['tensors_with_grad'] == r['trainable_tensors'] > 100
  assert r['queue_ptr'] == 3 * 16
  assert set(r['losses']) == {'itc', 'itm', 'mlm'}
  # Under torch.autocast (bfloat16) the same step trains every tensor too,
  # with losses near float32's (same weights and inputs: the seed).
  cmd16 = bench_reference.reference_command(
      os.environ['VLG_REFERENCE_PYTHON'], SCRIPT,
      os.environ['VLG_ALBEF_DIR'], str(path), steps=2, warmup=1, threads=1,
      matmul_size=256, autocast='bfloat16')
  r16 = bench_reference.run_reference(cmd16, timeout=600)
  assert r16['autocast'] == 'bfloat16'
  assert r16['tensors_with_grad'] == r16['trainable_tensors']
  for k, v in r['losses'].items():
    assert abs(r16['losses'][k] - v) < 0.05 * abs(v) + 1e-3, (k, v, r16)
