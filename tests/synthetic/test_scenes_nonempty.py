"""Every scene has at least one object, even at the most crowded settings."""

from vlg import synthetic as sy


def test_crowded_small_scenes_are_never_empty():
  cfg = sy.WorldConfig(resolution=48, min_objects=6, max_objects=6,
                       action_rate=1.0, touch_rate=1.0, inside_rate=1.0)
  for i in range(400):
    scene = sy.generate_scene('train', i, cfg)
    assert scene.objects, i
    assert sy.make_record('train', i, cfg)['captions']
