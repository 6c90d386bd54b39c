"""Numpy/PIL example transforms (run in grain workers: never import jax here).

Geometric ops keep boxes valid: a crop always contains the boxes the texts
refer to, and a horizontal flip mirrors every box *and* swaps "left"/"right"
in every text of the example, so spatial statements stay true. Colour jitter
is brightness-only within ±10%, which cannot change a colour's name.
Boxes are normalised (cx, cy, w, h) relative to the image.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_LEFT_RIGHT = re.compile(r'\b(left|right)\b')


class BadExampleError(ValueError):
  """An input example that cannot be used (empty text, unreadable image)."""


def pre_caption(text: str, max_words: int = 30) -> str:
  """ALBEF's caption normalisation; an empty result is bad input.

  Lower-cases, deletes ``, . ' ! ? " ( ) * # : ; ~``, turns ``-`` and ``/``
  into spaces, collapses whitespace and keeps ``max_words`` words.
  """
  if not isinstance(text, str):
    raise BadExampleError(f'Text is not a string: {text!r}')
  out = _PUNCT.sub('', text.lower()).replace('-', ' ').replace('/', ' ')
  words = out.split()[:max_words]
  if not words:
    raise BadExampleError(f'Text is empty after normalisation: {text!r}')
  return ' '.join(words)


def is_empty_after_normalisation(text: str) -> bool:
  """Whether :func:`pre_caption` leaves nothing of ``text`` (blank, or only
  punctuation such as ``'?!...'``): such a text is bad input."""
  try:
    pre_caption(text, 1)
  except BadExampleError:
    return True
  return False


def box_array(boxes, what: str = 'box') -> np.ndarray:
  """float32 [K, 4] of K boxes (cx, cy, w, h); a box that is not 4 finite
  numbers is bad input (the error quotes it)."""
  try:
    out = np.asarray(boxes, np.float32).reshape(-1, 4)
  except (ValueError, TypeError) as e:
    raise BadExampleError(f'{what}: each box must be 4 numbers (cx, cy, w, '
                          f'h), got {boxes!r}') from e
  if out.shape[0] != len(boxes) or not np.all(np.isfinite(out)):
    raise BadExampleError(f'{what}: each box must be 4 finite numbers (cx, '
                          f'cy, w, h), got {boxes!r}')
  return out


def swap_left_right(text: str) -> str:
  """Swaps the words 'left' and 'right' (whole words only)."""
  return _LEFT_RIGHT.sub(lambda m: 'right' if m.group(1) == 'left' else 'left',
                         text)


def hflip(image: np.ndarray, boxes: np.ndarray,
          texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Mirrors the image and boxes and swaps left/right in every text."""
  boxes = np.array(boxes, np.float32, copy=True).reshape(-1, 4)
  boxes[:, 0] = 1.0 - boxes[:, 0]
  return (np.ascontiguousarray(image[:, ::-1]), boxes,
          [swap_left_right(t) for t in texts])


def _union_xyxy(boxes: np.ndarray) -> np.ndarray | None:
  if boxes.size == 0:
    return None
  cx, cy, w, h = boxes.T
  return np.array([(cx - w / 2).min(), (cy - h / 2).min(),
                   (cx + w / 2).max(), (cy + h / 2).max()], np.float64)


def random_square_crop(
    image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
  """A random square crop that contains every box, its area in ``scale``.

  The side is drawn so the crop covers a fraction in ``scale`` of the image
  area; it grows as needed to contain the union of ``boxes`` (the objects the
  texts talk about), so no stated object or relation is cut away.

  Returns:
    The cropped image (not resized), the boxes re-normalised to the crop, and
    the crop (x0, y0, side) in normalised units of the input image.
  """
  h, w = image.shape[:2]
  if h != w:
    raise ValueError(f'random_square_crop expects a square image, got {h}x{w}')
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  side = float(np.sqrt(rng.uniform(*scale)))
  union = _union_xyxy(boxes)
  if union is not None:
    union = np.clip(union, 0.0, 1.0)
    side = max(side, union[2] - union[0], union[3] - union[1])
  side = min(side, 1.0)
  lo_x, lo_y, hi_x, hi_y = 0.0, 0.0, 1.0 - side, 1.0 - side
  if union is not None:
    lo_x, hi_x = max(0.0, union[2] - side), min(hi_x, union[0])
    lo_y, hi_y = max(0.0, union[3] - side), min(hi_y, union[1])
  x0 = float(rng.uniform(lo_x, max(lo_x, hi_x)))
  y0 = float(rng.uniform(lo_y, max(lo_y, hi_y)))
  px0, py0 = int(np.floor(x0 * w)), int(np.floor(y0 * h))
  pside = max(1, min(int(np.ceil(side * w)), w - px0, h - py0))
  # Re-normalise against the integer pixel crop actually taken.
  x0, y0, side = px0 / w, py0 / h, pside / w
  crop = image[py0:py0 + pside, px0:px0 + pside]
  out = boxes.copy()
  out[:, 0] = (boxes[:, 0] - x0) / side
  out[:, 1] = (boxes[:, 1] - y0) / side
  out[:, 2:] = boxes[:, 2:] / side
  return crop, out, (x0, y0, side)


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of a uint8 HxWx3 image to size x size."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  pil = Image.fromarray(image).resize((size, size), Image.BICUBIC)
  return np.asarray(pil, np.uint8)


def brightness(image: np.ndarray, rng: np.random.Generator,
               max_delta: float = 0.1) -> np.ndarray:
  """Scales brightness by a factor in [1 - max_delta, 1 + max_delta]."""
  factor = rng.uniform(1.0 - max_delta, 1.0 + max_delta)
  return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Decodes encoded image bytes to uint8 RGB; the error names the file."""
  import io  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img.convert('RGB'), np.uint8)
  except Exception as e:  # PIL raises many types for corrupt files.
    raise BadExampleError(f'Cannot decode image {name}: {e}') from e


def to_square(image: np.ndarray) -> np.ndarray:
  """Resizes a non-square image to a square of its longer side.

  Like ALBEF's ``Resize((R, R))`` this changes the aspect ratio, which leaves
  normalised boxes valid (a crop or pad would not).
  """
  if (getattr(image, 'ndim', 0) != 3 or image.shape[2] != 3 or
      0 in image.shape):
    raise BadExampleError('image must be an [H, W, 3] array with H, W > 0, '
                          f'got shape {getattr(image, "shape", None)}')
  h, w = image.shape[:2]
  if h == w:
    return image
  side = max(h, w)
  pil = Image.fromarray(image).resize((side, side), Image.BICUBIC)
  return np.asarray(pil, np.uint8)
