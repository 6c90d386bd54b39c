"""vlg.tools.tpu_topology: slice names and grids, compile-only devices."""

import importlib.util

import pytest

from vlg.tools import tpu_topology


def test_topology_grids_and_slice_names():
  assert tpu_topology.parse_topology('v5p:2x4x4') == tpu_topology.Topology('v5p', (2, 4, 4))
  assert tpu_topology.parse_topology('v5e:16x16').chips == 256
  # Slice names: chips for v5e/v6e, TensorCores (2 a chip) for v4/v5p.
  assert tpu_topology.parse_topology('v5e-256').shape == (16, 16)
  assert tpu_topology.parse_topology('v5e-8').shape == (2, 4)
  assert tpu_topology.parse_topology('v4-128').shape == (4, 4, 4)
  assert tpu_topology.parse_topology('v4-8').shape == (2, 2, 1)
  assert tpu_topology.parse_topology('v5p-64').shape == (2, 4, 4)
  assert tpu_topology.parse_topology('v5p-256').shape == (4, 4, 8)


@pytest.mark.parametrize('text', ['v7:2x2', 'v5e:2x2x2', 'v4:4x4', 'v5e',
                                  'tpu-256', 'v5p-6'])
def test_unknown_topology_names_the_forms_expected(text):
  with pytest.raises(ValueError, match=r'v5e:16x16, v5p:2x4x4.*v5e-256'):
    tpu_topology.parse_topology(text)


def test_missing_libtpu_says_what_to_install(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name: None if name == 'libtpu'
                      else find_spec(name))
  with pytest.raises(RuntimeError,
                     match='pip install -r requirements-tpu-aot.txt'):
    tpu_topology.compile_only_devices(tpu_topology.parse_topology('v5e:2x2'))


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                    reason='libtpu is not installed (pip install -r '
                    'requirements-tpu-aot.txt; CI installs it)')
@pytest.mark.parametrize('text, num_slices, devices, kind, hbm_gib', [
    ('v4-128', 1, 64, 'TPU v4', 32),  # Megacore: one device a chip.
    ('v5p-64', 1, 32, 'TPU v5', 95),
    ('v5e:1x1', 1, 1, 'TPU v5 lite', 16),  # Smaller than one host.
    ('v5e-8', 2, 16, 'TPU v5 lite', 16),
    ('v6e:2x2', 1, 4, 'TPU v6 lite', 32),
])
def test_compile_only_devices_of_each_kind(text, num_slices, devices, kind,
                                           hbm_gib):
  topology = tpu_topology.parse_topology(text)
  got = tpu_topology.compile_only_devices(topology, num_slices)
  assert len(got) == devices == topology.chips * num_slices
  assert {d.device_kind for d in got} == {kind}
  # Compile-only devices report no memory: the table gives the HBM.
  assert tpu_topology.hbm_bytes(got[0], topology.kind) == hbm_gib * 2**30
