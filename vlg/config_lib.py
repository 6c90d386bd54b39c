"""Config helpers: ``get_config(arg)`` argument parsing and step schedules.

``--config=configs/albef.py:tiny`` or ``:variant=base,runlocal`` passes the
text after the colon to ``get_config(arg)``; :func:`parse_arg` turns it into a
ConfigDict of typed values (big_vision's mini-language). Durations are always
in steps (``*_steps``); :func:`itstime` decides when a periodic action fires.
"""

from __future__ import annotations

from typing import Any

import ml_collections


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
