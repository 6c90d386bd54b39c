"""vlg.sharding: the mesh over config.mesh and config.num_devices."""

import jax
import pytest

from vlg import sharding


def test_mesh_devices_takes_the_first_n_or_all():
  assert sharding.mesh_devices(0) == jax.devices()
  assert sharding.mesh_devices(8) == jax.devices()
  assert sharding.mesh_devices(2) == jax.devices()[:2]
  mesh = sharding.make_mesh((-1, 1, 1), devices=sharding.mesh_devices(1))
  assert mesh.size == 1 and dict(mesh.shape) == {'data': 1, 'fsdp': 1,
                                                 'tensor': 1}


@pytest.mark.parametrize('n', [9, -1])
def test_mesh_devices_outside_the_host_is_a_clear_error(n):
  with pytest.raises(ValueError, match=rf'config.num_devices={n}: there are '
                     r'8 devices \(0 means all\)'):
    sharding.mesh_devices(n)


def test_a_mesh_that_does_not_fit_the_devices_names_both():
  with pytest.raises(ValueError, match=r'Mesh \[2, 2, 1\] needs 4 devices '
                     'but 1 are available'):
    sharding.make_mesh((2, 2, 1), devices=sharding.mesh_devices(1))


def test_a_mesh_over_two_slices_puts_the_slices_on_the_data_axis():
  pytest.importorskip('libtpu', reason='libtpu is not installed (pip '
                      'install -r requirements-tpu-aot.txt; CI installs it)')
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc('v5e:2x2', platform='tpu',
                                         num_slices=2).devices
  mesh = sharding.make_mesh((-1, 1, 1), devices=devices)
  assert dict(mesh.shape) == {'data': 8, 'fsdp': 1, 'tensor': 1}
  slices = [d.slice_index for d in mesh.devices.ravel()]
  assert slices == [0] * 4 + [1] * 4
  mesh = sharding.make_mesh((2, -1, 1), devices=devices)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'tensor': 1}
  for row, slice_index in zip(mesh.devices, (0, 1)):
    assert {d.slice_index for d in row.ravel()} == {slice_index}
  with pytest.raises(ValueError, match=r'spans 2 slices.*multiple of 2'):
    sharding.make_mesh((1, -1, 1), devices=devices)


def test_data_shards_counts_the_devices_a_batch_splits_over():
  devices = sharding.mesh_devices(8)
  assert sharding.data_shards(
      sharding.make_mesh((2, 2, 2), devices=devices)) == 4
  assert sharding.data_shards(
      sharding.make_mesh((1, 1, 8), devices=devices)) == 1
  mesh = sharding.make_mesh((-1, 1, 1), devices=devices)
  assert sharding.data_shards(mesh) == 8
  # What the batch rule splits a batch into on that mesh, by the rules.
  with jax.set_mesh(mesh), sharding.rules_context(
      [('batch', ('data', 'fsdp'))]):
    assert sharding.batch_shards() == sharding.data_shards(mesh)
