"""Example ops: flips swap left/right and mirror boxes; crops keep boxes."""

import numpy as np
import pytest
from PIL import Image

from vlg.data import ops


def _box_image(size, box):
  """A black image with a white rectangle at normalised (cx, cy, w, h)."""
  img = np.zeros((size, size, 3), np.uint8)
  cx, cy, w, h = box
  x0, x1 = int(round((cx - w / 2) * size)), int(round((cx + w / 2) * size))
  y0, y1 = int(round((cy - h / 2) * size)), int(round((cy + h / 2) * size))
  img[y0:y1, x0:x1] = 255
  return img


def _measured_box(img):
  ys, xs = np.nonzero(img[..., 0] > 127)
  size = img.shape[0]
  x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
  return np.array([(x0 + x1) / 2 / size, (y0 + y1) / 2 / size,
                   (x1 - x0) / size, (y1 - y0) / size])


def test_pre_caption_matches_albef_rules():
  assert ops.pre_caption('A Red-circle, left/of (the) "blue" square!') == (
      'a red circle left of the blue square')
  assert ops.pre_caption('one two three four', max_words=2) == 'one two'
  with pytest.raises(ops.BadExampleError, match='empty'):
    ops.pre_caption(' .,!? ')


def test_swap_left_right_whole_words_only():
  assert ops.swap_left_right('the star is left of the ring, right?') == (
      'the star is right of the ring, left?')
  assert ops.swap_left_right('leftover brightness') == 'leftover brightness'


def test_hflip_mirrors_boxes_and_texts_consistently():
  box = np.array([0.25, 0.5, 0.2, 0.3], np.float32)
  img = _box_image(64, box)
  flipped, boxes, texts = ops.hflip(img, box[None], ['square left of ring'])
  np.testing.assert_allclose(_measured_box(flipped), boxes[0], atol=1 / 64)
  assert boxes[0, 0] == pytest.approx(0.75)
  assert texts == ['square right of ring']
  # The statement "box A left of box B" becomes "right of" and stays true.
  a, b = np.array([[0.2, 0.5, 0.1, 0.1], [0.7, 0.5, 0.1, 0.1]], np.float32)
  _, fb, ft = ops.hflip(img, np.stack([a, b]), ['a left of b'])
  assert ft == ['a right of b'] and fb[0, 0] > fb[1, 0]


@pytest.mark.parametrize('seed', range(20))
def test_random_crop_contains_boxes_and_tracks_them(seed):
  rng = np.random.default_rng(seed)
  box = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), 0.2, 0.15],
                 np.float32)
  img = _box_image(128, box)
  crop, boxes, (x0, y0, side) = ops.random_square_crop(img, box[None], rng,
                                                       (0.2, 1.0))
  assert crop.shape[0] == crop.shape[1]
  b = boxes[0]
  assert b[0] - b[2] / 2 >= -1e-6 and b[0] + b[2] / 2 <= 1 + 1e-6
  assert b[1] - b[3] / 2 >= -1e-6 and b[1] + b[3] / 2 <= 1 + 1e-6
  np.testing.assert_allclose(_measured_box(crop), b, atol=1.5 / crop.shape[0])
  resized = ops.resize(crop, 64)
  np.testing.assert_allclose(_measured_box(resized), b, atol=2.5 / 64)


def test_brightness_bounded():
  rng = np.random.default_rng(0)
  img = np.full((8, 8, 3), 100, np.uint8)
  out = ops.brightness(img, rng, 0.1)
  assert 90 <= out.min() and out.max() <= 110


def test_decode_image_names_the_file(tmp_path):
  good = tmp_path / 'good.png'
  Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(good)
  assert ops.decode_image(good.read_bytes(), str(good)).shape == (4, 6, 3)
  with pytest.raises(ops.BadExampleError, match='broken.jpg'):
    ops.decode_image(b'not an image', 'broken.jpg')


def test_to_square_keeps_normalised_boxes():
  img = np.zeros((40, 80, 3), np.uint8)
  img[10:30, 20:40] = 255
  sq = ops.to_square(img)
  assert sq.shape == (80, 80, 3)
  np.testing.assert_allclose(_measured_box(sq), [0.375, 0.5, 0.25, 0.5],
                             atol=2 / 80)
