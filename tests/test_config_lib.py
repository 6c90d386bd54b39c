"""config_lib: argument parsing and the periodic-action schedule."""

import pytest

from vlg import config_lib


def test_parse_arg_types_and_lone_value():
  a = config_lib.parse_arg('base,runlocal,n=3', variant='tiny',
                           runlocal=False, n=1)
  assert a.variant == 'base' and a.runlocal is True and a.n == 3
  assert config_lib.parse_arg(None, variant='tiny').variant == 'tiny'
  assert config_lib.parse_arg('runlocal=false', variant='t',
                              runlocal=True).runlocal is False


def test_parse_arg_unknown_key_fails():
  with pytest.raises(ValueError, match='Unknown config argument'):
    config_lib.parse_arg('variant=tiny,typo=1', variant='x')


def test_itstime():
  fired = [s for s in range(1, 26) if config_lib.itstime(s, 10, 25)]
  assert fired == [10, 20, 25]
  fired = [s for s in range(1, 26)
           if config_lib.itstime(s, 10, 25, first=True, last=False)]
  assert fired == [1, 10, 20]
  assert not any(config_lib.itstime(s, 0, 5, last=False) for s in range(1, 6))
