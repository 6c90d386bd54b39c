"""The package layout: imports flow one way between vlg's subpackages.

Every module under ``vlg/`` is parsed with ``ast`` (nothing is imported, so
no jax): every ``import`` and ``from ... import`` anywhere in it counts,
at module level, inside functions or under ``TYPE_CHECKING``, and so does
``importlib.import_module('vlg....')`` with a literal (or f-string) name.
Each module belongs to a *unit*: the longest unit of :data:`LAYERS` that
contains it (``vlg.data.parts.mrc`` → ``vlg.data``,
``vlg.synthetic.benchmarks.vsr`` → ``vlg.synthetic.benchmarks``), or
itself for a module directly in ``vlg/`` (``vlg.train``). :data:`LAYERS` orders the units, lowest first; a unit may
import only itself and units of lower layers (docs/architecture.md §2).
"""

import ast
import collections
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = 'vlg'

# Lowest first. A unit imports only itself and units of lower layers, so
# no two units of one layer import each other.
LAYERS = (
    # Where vlg's rebuildable caches live (the compilation cache's and the
    # synthetic benchmark sets' folder).
    ('vlg.cache_root',),
    # Leaf utilities: no other vlg import but the cache folder.
    ('vlg.sharding', 'vlg.config_lib', 'vlg.writers', 'vlg.optim',
     'vlg.checkpointing', 'vlg.predict', 'vlg.huge_pages',
     'vlg.compilation_cache'),
    # The built-in synthetic world, then its benchmark writers.
    ('vlg.synthetic',),
    ('vlg.synthetic.benchmarks',),
    # The input pipeline (grain, NumPy only; reads the world as a source).
    ('vlg.data',),
    # Benchmark readers; data preparation (annotation formats → records).
    ('vlg.benchmarks', 'vlg.prepare'),
    # Models, losses, and pretrained-weight import (numpy readers).
    ('vlg.models', 'vlg.objectives', 'vlg.weights'),
    # The vision tower's labelled pretraining before a run (a model and
    # weights in vlg's layout).
    ('vlg.vision_pretrain',),
    # Evaluation during training; analysis of finished runs.
    ('vlg.evaluators', 'vlg.analysis'),
    # The training core.
    ('vlg.train_state', 'vlg.false_negatives', 'vlg.recipes'),
    ('vlg.train', 'vlg.restore'),
    ('vlg.main',),
    # Projects built on the core.
    ('vlg.projects', 'vlg.projects.probing', 'vlg.projects.study'),
    # Commands.
    ('vlg.tools',),
)
PLACED = tuple(u for layer in LAYERS for u in layer)
PROJECTS = 'vlg.projects'
TOOLS = 'vlg.tools'
# The training core: everything but the projects and the commands.
CORE = tuple(u for layer in LAYERS for u in layer
             if not u.startswith((PROJECTS, TOOLS)))
# What the input pipeline may import: the world it reads and the mesh
# helpers of pipeline.to_global (never objectives, models or the loop).
DATA_MAY_IMPORT = ('vlg.data', 'vlg.synthetic', 'vlg.sharding')


def module_files() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name (packages by their name)."""
  out = {}
  for path in sorted((ROOT / PACKAGE).rglob('*.py')):
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts = parts[:-1]
    out['.'.join(parts)] = path
  return out


MODULES = module_files()
PACKAGES = {name for name, path in MODULES.items()
            if path.name == '__init__.py'}


def unit(module: str) -> str:
  """The layout unit of a module: the longest unit of :data:`LAYERS` that
  contains it (``vlg.data.parts.mrc`` → ``vlg.data``); otherwise its
  innermost package, or itself when it is a module directly in vlg/ or a
  package (so a new subpackage must be placed in LAYERS)."""
  for name in sorted(PLACED, key=len, reverse=True):
    if module == name or module.startswith(name + '.'):
      return name
  if module in PACKAGES:
    return module
  parent = module.rsplit('.', 1)[0]
  return module if parent == PACKAGE else parent


def _dynamic_name(node: ast.Call) -> str | None:
  """The vlg module named by ``importlib.import_module(...)`` or
  ``__import__(...)`` with a literal name; for an f-string, its literal
  prefix up to the last dot (``f'vlg.models.{name}'`` → ``vlg.models``)."""
  func = node.func
  name = (func.attr if isinstance(func, ast.Attribute) else
          func.id if isinstance(func, ast.Name) else None)
  if name not in ('import_module', '__import__') or not node.args:
    return None
  arg = node.args[0]
  if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
    text = arg.value
  elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(
      arg.values[0], ast.Constant):
    text = str(arg.values[0].value).rsplit('.', 1)[0]
  else:
    return None
  return text if text.split('.')[0] == PACKAGE else None


def imports_of(module: str) -> set[tuple[str, int]]:
  """(imported vlg module, line) of every import in ``module``."""
  path = MODULES[module]
  tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
  package = module if module in PACKAGES else module.rsplit('.', 1)[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update((a.name, node.lineno) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split('.')[:len(package.split('.')) - node.level + 1]
        source = '.'.join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      for alias in node.names:
        full = f'{source}.{alias.name}'
        found.add((full if full in MODULES else source, node.lineno))
    elif isinstance(node, ast.Call):
      name = _dynamic_name(node)
      if name:
        found.add((name, node.lineno))
  return {(name, line) for name, line in found
          if name.split('.')[0] == PACKAGE}


def unit_imports() -> dict[tuple[str, str], list[str]]:
  """{(unit, imported unit): ['module:line imports target', ...]} over
  every import between two different units."""
  edges = collections.defaultdict(list)
  for module in MODULES:
    for target, line in sorted(imports_of(module)):
      if target == PACKAGE:
        raise AssertionError(f'{module}:{line} imports the bare vlg package')
      if target not in MODULES:
        raise AssertionError(f'{module}:{line} imports {target}, which is '
                             'not a module of vlg')
      a, b = unit(module), unit(target)
      if a != b:
        edges[a, b].append(f'{MODULES[module].relative_to(ROOT)}:{line} '
                           f'imports {target}')
  return edges


EDGES = unit_imports()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one node (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _where(pairs) -> str:
  return '\n'.join(f'  {a} -> {b}: ' + '; '.join(EDGES[a, b])
                   for a, b in sorted(pairs))


def test_the_checker_sees_imports_and_cycles():
  # Module-level, function-level and dynamic imports are all seen.
  assert ('vlg.train', 'vlg.data') in EDGES
  assert ('vlg.data', 'vlg.synthetic') in EDGES  # Inside sources._synthetic.
  assert ('vlg.tools', 'vlg.projects.study') in EDGES
  # importlib.import_module(f'vlg.models.{config.name}'):
  assert {name for name, _ in imports_of('vlg.models')} == {'vlg.models'}
  assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      ['a', 'b', 'c']]
  assert not find_cycles({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}})


def test_every_unit_has_a_layer():
  placed = [u for layer in LAYERS for u in layer]
  assert len(placed) == len(set(placed)), 'a unit in two layers'
  units = {unit(m) for m in MODULES} - {PACKAGE}
  assert not units - set(placed), (
      f'place these in LAYERS: {sorted(units - set(placed))}')
  assert not set(placed) - units, (
      f'LAYERS names what does not exist: {sorted(set(placed) - units)}')


def test_the_root_package_imports_nothing():
  assert not imports_of(PACKAGE)


def test_no_import_cycle_between_subpackages():
  graph = collections.defaultdict(set)
  for a, b in EDGES:
    graph[a].add(b)
  cycles = find_cycles(graph)
  assert not cycles, 'import cycles between units:\n' + '\n'.join(
      ' <-> '.join(c) + '\n' + _where(
          (a, b) for a, b in EDGES if a in c and b in c) for c in cycles)


def test_imports_flow_down_the_layers():
  layer = {u: i for i, units in enumerate(LAYERS) for u in units}
  upward = [(a, b) for a, b in EDGES if layer[b] >= layer[a]]
  assert not upward, ('imports of a unit in the same or a higher layer '
                      '(tests/test_layout.py LAYERS):\n' + _where(upward))


def test_the_core_never_imports_a_project_or_a_command():
  bad = [(a, b) for a, b in EDGES
         if a in CORE and b.startswith((PROJECTS, TOOLS))]
  assert not bad, 'the core imports a project or a command:\n' + _where(bad)


def test_projects_do_not_import_each_other():
  bad = [(a, b) for a, b in EDGES if a.startswith(PROJECTS + '.') and
         b.startswith(PROJECTS + '.') and a.split('.')[2] != b.split('.')[2]]
  assert not bad, 'a project imports another:\n' + _where(bad)


def test_data_imports_neither_objectives_nor_models():
  bad = [(a, b) for a, b in EDGES
         if a == 'vlg.data' and not b.startswith(DATA_MAY_IMPORT)]
  assert not bad, ('the input pipeline imports beyond '
                   f'{DATA_MAY_IMPORT}:\n' + _where(bad))


def test_the_synthetic_world_imports_nothing_of_the_core():
  bad = [(a, b) for a, b in EDGES
         if a.startswith('vlg.synthetic') and not b.startswith('vlg.synthetic')]
  assert not bad, 'the synthetic world imports the core:\n' + _where(bad)
