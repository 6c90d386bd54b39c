"""Config helpers: ``get_config(arg)`` argument parsing and step schedules.

``--config=configs/albef.py:tiny`` or ``:variant=base,runlocal`` passes the
text after the colon to ``get_config(arg)``; :func:`parse_arg` turns it into a
ConfigDict of typed values (big_vision's mini-language). Durations are always
in steps (``*_steps``); :func:`itstime` decides when a periodic action fires.
:func:`unknown_field` explains a ``--config.a.b=…`` override of a field that
does not exist.
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any

import ml_collections
from absl import app
from absl import flags


def _coerce(value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value.lower() in ('1', 'true', 'yes', ''):
      return True
    if value.lower() in ('0', 'false', 'no'):
      return False
    raise ValueError(f'Expected a boolean, got {value!r}')
  if default is None:
    return value
  return type(default)(value)


def parse_arg(arg: str | None, *, lazy: bool = False,
              **spec: Any) -> ml_collections.ConfigDict:
  """Parses ``'a=1,b,c=x'`` against defaults ``spec``.

  A bare word sets a boolean key to True; a lone value with no ``=`` that is
  not a boolean key fills the first key (so ``albef.py:tiny`` sets
  ``variant='tiny'``). Unknown keys fail unless ``lazy`` is set.

  Args:
    arg: the string after the colon of ``--config=file.py:...``.
    lazy: accept keys that are not in ``spec`` (as strings).
    **spec: keys with default values; the defaults fix the types.

  Returns:
    A ConfigDict with every key of ``spec`` (and, if lazy, the extra ones).
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  first_key = next(iter(spec), None)
  for i, item in enumerate(p for p in arg.split(',') if p):
    if '=' in item:
      key, value = item.split('=', 1)
    elif item in spec and isinstance(spec[item], bool):
      key, value = item, 'true'
    elif i == 0 and first_key is not None:
      key, value = first_key, item
    else:
      key, value = item, 'true'
    if key not in spec:
      if not lazy:
        raise ValueError(f'Unknown config argument {key!r}; valid: '
                         f'{sorted(spec)}')
      out[key] = value
      continue
    out[key] = _coerce(value, spec[key])
  return out


def itstime(step: int, every_n_steps: int | None, total_steps: int, *,
            first: bool = False, last: bool = True) -> bool:
  """Whether a periodic action runs after ``step`` (1-based).

  Fires every ``every_n_steps``, optionally at the first step, and at the
  last step unless ``last`` is False. ``every_n_steps`` None or <= 0 disables
  the periodic firing (first/last still apply).
  """
  is_last = step == total_steps
  is_first = step == 1
  periodic = bool(every_n_steps) and every_n_steps > 0 and (
      step % every_n_steps == 0)
  return periodic or (last and is_last) or (first and is_first)


def _keys(node: Any) -> list[str] | None:
  """The field names of a config group (ConfigDict or dict); None for a
  leaf value."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return [str(k) for k in node.keys()]
  return None


def _paths(node: Any, prefix: str = '') -> list[str]:
  """Every dotted field path under ``node``, groups before their fields."""
  out = []
  for key in _keys(node) or ():
    path = f'{prefix}{key}'
    out.append(path)
    out += _paths(node[key], f'{path}.')
  return out


def _exists(config: Any, parts: list[str]) -> bool:
  node = config
  for part in parts:
    keys = _keys(node)
    key = part.split('[', 1)[0]  # 'rules[0]' indexes the field 'rules'.
    if keys is None or key not in keys:
      return False
    node = node[key]
  return True


def unknown_field(config: Any, path: str) -> str | None:
  """Why the dotted ``path`` (what ``--config.<path>=…`` overrides) names no
  field of ``config``, in one line with the nearest valid field; None if it
  names one.

  The nearest field is a close match (``difflib``) of the first missing
  component among its siblings, keeping the rest of the path
  (``optimm.lr`` → ``optim.lr``, ``optim.lrr`` → ``optim.lr``), else the
  field anywhere in the config whose last component is closest to the
  path's (``lr`` → ``optim.lr``).
  """
  parts = path.split('.')
  if _exists(config, parts):
    return None
  node, i = config, 0
  while _keys(node) is not None and parts[i].split('[', 1)[0] in _keys(node):
    node, i = node[parts[i].split('[', 1)[0]], i + 1
  done = '.'.join(parts[:i])
  keys = _keys(node)
  if keys is None:
    return (f'unknown config field {path!r}: {done!r} is a '
            f'{type(node).__name__} value, not a group of fields')
  nearest = None
  for match in difflib.get_close_matches(parts[i].split('[', 1)[0], keys):
    candidate = parts[:i] + [match] + parts[i + 1:]
    if _exists(config, candidate):
      nearest = '.'.join(candidate)
      break
  if nearest is None:
    by_leaf = {}
    for p in _paths(config):
      by_leaf.setdefault(p.rsplit('.', 1)[-1], p)
    close = difflib.get_close_matches(parts[-1], list(by_leaf), n=1)
    nearest = by_leaf[close[0]] if close else None
  where = f'under {done!r}' if done else 'at the top level'
  if nearest is not None:
    return f'unknown config field {path!r}; did you mean {nearest!r}?'
  return (f'unknown config field {path!r}; the fields {where} are '
          f'{sorted(keys)}')


def override_error(argv: list[str]) -> str | None:
  """The message for the first ``--config.<path>`` of ``argv`` that names no
  field of the config ``--config`` loads; None if there is none (or the
  config cannot be loaded)."""
  config_arg, overrides = None, []
  for i, arg in enumerate(argv):
    if re.match(r'^--?config(=|$)', arg):
      config_arg = arg.split('=', 1)[1] if '=' in arg else (
          argv[i + 1] if i + 1 < len(argv) else None)
    elif m := re.match(r'^--?(?:no)?config\.([^=]+)', arg):
      overrides.append((m.group(1), arg))
  if config_arg is None:
    return None
  try:
    config = flags.FLAGS['config'].parser.parse(config_arg)
  except Exception:  # pylint: disable=broad-except
    return None
  for path, arg in overrides:
    message = unknown_field(config, path)
    if message is not None:
      return f'{arg.split("=", 1)[0]}: {message} (config {config_arg})'
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run``'s default), except that an override
  of a field the config does not have (``--config.optim.lrr=1``) exits
  non-zero with one line naming the path and the nearest valid field,
  instead of ml_collections' traceback. Every command with a ``--config``
  flag runs with ``app.run(main, flags_parser=config_lib.parse_flags)``."""
  try:
    return app.parse_flags_with_usage(argv)
  except Exception:  # config_flags raises AttributeError, KeyError, ...
    message = override_error(list(argv))
    if message is None:
      raise
  sys.exit(f'FATAL Flags parsing error: {message}')
