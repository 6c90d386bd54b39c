"""Image-text retrieval test sets: Karpathy COCO / Flickr30K, image paragraphs.

Karpathy splits in ALBEF's layout (``coco_test.json``, ``flickr30k_test.json``)
are one JSON list::

  [{"image": "val2014/COCO_val2014_000000391895.jpg",
    "caption": ["A man with a red helmet ...", ...]}, ...]

``caption`` is normally a list of 5 strings; a single string is read as a
one-caption list (ALBEF's own loop would iterate its characters). The texts
are returned as written: ALBEF's ``pre_caption`` belongs to the evaluator's
pinned preprocessing (``vlg.data.ops.pre_caption``), not to the reader.

Stanford image paragraphs (Krause et al. 2017): ``paragraphs_v1.json`` is a
JSON list of ``{"image_id": 2356347, "paragraph": "...", "url": ".../
2356347.jpg"}``; the split files ``train_split.json`` / ``val_split.json`` /
``test_split.json`` are JSON lists of image ids (the test split has 2,489).
The image file is ``<image_id>.jpg`` (Visual Genome naming).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from vlg.benchmarks import common


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
  """Images, texts and their ground-truth links, as ALBEF's re_eval_dataset.

  Texts are numbered across images in file order: image ``i``'s captions are
  texts ``img2txt[i]``, and ``txt2img[t]`` is the image of text ``t``.
  (ALBEF keeps the two maps as dicts keyed ``0..N-1``; tuples index the same.)

  Attributes:
    images: image paths relative to the image root, one per image.
    texts: all captions, image by image.
    txt2img: for each text, the index of its image.
    img2txt: for each image, the indices of its texts.
    files: the files read.
    num_records: entries in the file, before skipping.
    skipped: one message per skipped bad entry (``skip_bad=True`` only).
  """
  images: tuple[str, ...]
  texts: tuple[str, ...]
  txt2img: tuple[int, ...]
  img2txt: tuple[tuple[int, ...], ...]
  files: tuple[str, ...] = ()
  num_records: int = 0
  skipped: tuple[str, ...] = ()

  @property
  def num_skipped(self) -> int:
    """How many bad entries were skipped."""
    return len(self.skipped)

  @classmethod
  def from_captions(cls, images: Sequence[str],
                    captions: Sequence[Sequence[str]], **metadata: Any
                    ) -> RetrievalSet:
    """Builds the index maps from per-image caption lists.

    Args:
      images: image paths.
      captions: ``captions[i]`` are the texts of ``images[i]`` (at least one).
      **metadata: ``files``, ``num_records``, ``skipped``.

    Returns:
      The retrieval set.
    """
    if len(images) != len(captions):
      raise ValueError(f'{len(images)} images but {len(captions)} caption '
                       'lists')
    texts, txt2img, img2txt = [], [], []
    for img_id, caps in enumerate(captions):
      if not caps:
        raise ValueError(f'image {images[img_id]!r} has no caption')
      img2txt.append(tuple(range(len(texts), len(texts) + len(caps))))
      texts.extend(caps)
      txt2img.extend([img_id] * len(caps))
    return cls(images=tuple(images), texts=tuple(texts),
               txt2img=tuple(txt2img), img2txt=tuple(img2txt), **metadata)


def _captions(entry: dict[str, Any]) -> list[str]:
  value = entry.get('caption')
  if value is None:
    raise common.FieldError("missing required field 'caption'")
  captions = [value] if isinstance(value, str) else value
  if not isinstance(captions, list) or not captions:
    raise common.FieldError("field 'caption' must be a string or a non-empty "
                            f'list of strings, got {value!r}')
  for i, caption in enumerate(captions):
    if not isinstance(caption, str) or not caption.strip():
      raise common.FieldError(f"field 'caption' item {i} must be a non-empty "
                              f'string, got {caption!r}')
  return captions


def load_retrieval(json_path: str | os.PathLike, skip_bad: bool = False
                   ) -> RetrievalSet:
  """Reads an ALBEF/Karpathy retrieval test file.

  Args:
    json_path: e.g. ``coco_test.json`` (5,000 images) or
      ``flickr30k_test.json`` (1,000 images).
    skip_bad: skip (and count) bad entries instead of raising.

  Returns:
    The retrieval set, images in file order.

  Raises:
    BenchmarkFormatError: the file is not a JSON list; or (unless
      ``skip_bad``) an entry lacks ``image``/``caption`` or has a wrong type;
      names the file and the entry index.
  """
  collector = common.Collector(os.fspath(json_path), skip_bad)
  data = common.read_json(collector.path)
  if not isinstance(data, list):
    collector.fail('', 'expected a JSON list of {"image", "caption"} '
                   f'objects, got {type(data).__name__}')
  images, captions = [], []
  for index, entry in enumerate(data):
    collector.num_records += 1
    try:
      entry = common.require_dict(entry)
      image = common.get_str(entry, 'image')
      caps = _captions(entry)
    except common.FieldError as e:
      collector.bad(f'entry {index}', str(e))
      continue
    images.append(image)
    captions.append(caps)
  collector.log_skips()
  return RetrievalSet.from_captions(
      images, captions, files=(collector.path,),
      num_records=collector.num_records, skipped=tuple(collector.skipped))


# ------------------------------------------------------- image paragraphs


@dataclasses.dataclass(frozen=True)
class ParagraphExample:
  """One Visual Genome image with its descriptive paragraph.

  Attributes:
    image_id: the Visual Genome image id.
    image_file: ``'<image_id>.jpg'``.
    paragraph: the paragraph, as written.
    url: the image URL, if given.
  """
  image_id: int
  image_file: str
  paragraph: str
  url: str | None = None

  def image_files(self) -> tuple[str, ...]:
    return (self.image_file,)


def _read_split(path: str) -> list[int]:
  data = common.read_json(path)
  if not isinstance(data, list):
    raise common.BenchmarkFormatError(path, '', 'expected a JSON list of '
                                      f'image ids, got {type(data).__name__}')
  ids = []
  for index, value in enumerate(data):
    try:
      ids.append(common.get_int({'image_id': value}, 'image_id',
                                allow_str=True))
    except common.FieldError as e:
      raise common.BenchmarkFormatError(path, f'entry {index}', str(e)) from e
  if len(set(ids)) != len(ids):
    raise common.BenchmarkFormatError(path, '', 'repeats an image id')
  return ids


def load_paragraphs(paragraphs_json: str | os.PathLike,
                    split_json: str | os.PathLike | None = None,
                    skip_bad: bool = False
                    ) -> common.Loaded[ParagraphExample]:
  """Reads Stanford image paragraphs, optionally restricted to a split.

  Args:
    paragraphs_json: ``paragraphs_v1.json``.
    split_json: e.g. ``test_split.json``; None keeps every image.
    skip_bad: skip (and count) bad entries, and split ids that have no
      paragraph, instead of raising.

  Returns:
    One example per image: in split-file order when a split is given (so
    retrieval indices follow the split file), else in paragraph-file order.
    ``num_filtered`` counts paragraphs outside the split.

  Raises:
    BenchmarkFormatError: a file is not a JSON list; or (unless ``skip_bad``)
      an entry with a missing or wrongly typed field, an image id given two
      paragraphs, or a split id without a paragraph.
  """
  collector = common.Collector(os.fspath(paragraphs_json), skip_bad)
  data = common.read_json(collector.path)
  if not isinstance(data, list):
    collector.fail('', 'expected a JSON list of {"image_id", "paragraph"} '
                   f'objects, got {type(data).__name__}')
  by_id: dict[int, ParagraphExample] = {}
  first_entry: dict[int, int] = {}
  for index, entry in enumerate(data):
    collector.num_records += 1
    try:
      entry = common.require_dict(entry)
      image_id = common.get_int(entry, 'image_id', allow_str=True)
      if image_id in by_id:
        raise common.FieldError(f'image_id {image_id} already has a '
                                f'paragraph (entry {first_entry[image_id]})')
      example = ParagraphExample(
          image_id=image_id, image_file=f'{image_id}.jpg',
          paragraph=common.get_str(entry, 'paragraph'),
          url=common.get_str(entry, 'url', required=False))
    except common.FieldError as e:
      collector.bad(f'entry {index}', str(e))
      continue
    by_id[image_id] = example
    first_entry[image_id] = index
  if split_json is None:
    return common.make_loaded(by_id.values(), [collector])
  # The split file's ids are not records of their own (num_records stays 0);
  # an id without a paragraph is reported against the split file.
  split = common.Collector(os.fspath(split_json), skip_bad)
  examples = []
  for index, image_id in enumerate(_read_split(split.path)):
    if image_id in by_id:
      examples.append(by_id[image_id])
    else:
      split.bad(f'entry {index}', f'image id {image_id} has no paragraph in '
                f'{collector.path}')
  num_filtered = len(by_id) - len(examples)
  return common.make_loaded(examples, [collector, split], num_filtered)


def paragraph_retrieval_set(examples: Sequence[ParagraphExample]
                            ) -> RetrievalSet:
  """The retrieval set of paragraphs: one text (the paragraph) per image."""
  metadata = {}
  if isinstance(examples, common.Loaded):
    metadata = dict(files=examples.files, num_records=examples.num_records,
                    skipped=examples.skipped)
  return RetrievalSet.from_captions([e.image_file for e in examples],
                                    [[e.paragraph] for e in examples],
                                    **metadata)
