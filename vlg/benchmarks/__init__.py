"""Readers for the real file formats of vlg's evaluation benchmarks.

One parser per benchmark serves both the published annotation files and the
synthetic look-alike sets that ``vlg.tools.synth`` writes in the same layouts,
so a loader bug cannot hide behind a format difference. Each reader returns
frozen dataclass examples (``Loaded``, a read-only sequence with counts of
records read, skipped and filtered) and raises ``BenchmarkFormatError`` (a
``ValueError``) naming the file and line/key of malformed input; ``skip_bad``
skips bad records and counts them instead. Plain Python: no jax/TF imports.

| benchmark | reader | module |
| --- | --- | --- |
| VALSE | ``load_valse`` | ``valse`` |
| VSR | ``load_vsr``, ``load_vsr_categories`` | ``vsr`` |
| SVO-Probes (CSV and JSONL) | ``load_svo_probes`` | ``svo_probes`` |
| Winoground | ``load_winoground`` | ``winoground`` |
| COCO / Flickr30K Karpathy test | ``load_retrieval`` | ``retrieval`` |
| Stanford image paragraphs | ``load_paragraphs`` | ``retrieval`` |
| RefCOCOg (umd) | ``load_refcocog`` | ``refcocog`` |

Each module's docstring records the file layout and what the real files
contain. ``check_images`` tells an evaluator which examples have their images,
so it can report "N evaluated / N in the file" and name the missing ones.
"""

from vlg.benchmarks.common import BenchmarkFormatError
from vlg.benchmarks.common import check_images
from vlg.benchmarks.common import image_path
from vlg.benchmarks.common import Loaded
from vlg.benchmarks.refcocog import load_refcocog
from vlg.benchmarks.refcocog import RefExample
from vlg.benchmarks.retrieval import load_paragraphs
from vlg.benchmarks.retrieval import load_retrieval
from vlg.benchmarks.retrieval import paragraph_retrieval_set
from vlg.benchmarks.retrieval import ParagraphExample
from vlg.benchmarks.retrieval import RetrievalSet
from vlg.benchmarks.svo_probes import load_svo_probes
from vlg.benchmarks.svo_probes import SvoExample
from vlg.benchmarks.valse import load_valse
from vlg.benchmarks.valse import VALSE_PIECE_ORDER
from vlg.benchmarks.valse import VALSE_PIECES
from vlg.benchmarks.valse import valse_piece
from vlg.benchmarks.valse import ValseExample
from vlg.benchmarks.vsr import categorise_relations
from vlg.benchmarks.vsr import load_vsr
from vlg.benchmarks.vsr import load_vsr_categories
from vlg.benchmarks.vsr import VSR_CATEGORIES
from vlg.benchmarks.vsr import UNKNOWN_CATEGORY
from vlg.benchmarks.vsr import VSR_RELATIONS
from vlg.benchmarks.vsr import vsr_relations
from vlg.benchmarks.vsr import VsrExample
from vlg.benchmarks.winoground import image_path as winoground_image_path
from vlg.benchmarks.winoground import images_dir as winoground_images_dir
from vlg.benchmarks.winoground import load_winoground
from vlg.benchmarks.winoground import WinogroundExample

__all__ = [
    'BenchmarkFormatError', 'Loaded', 'check_images', 'image_path',
    'load_refcocog', 'RefExample', 'load_paragraphs', 'load_retrieval',
    'paragraph_retrieval_set', 'ParagraphExample', 'RetrievalSet',
    'load_svo_probes', 'SvoExample', 'load_valse', 'VALSE_PIECE_ORDER',
    'VALSE_PIECES', 'valse_piece', 'ValseExample', 'load_vsr',
    'load_vsr_categories', 'categorise_relations', 'UNKNOWN_CATEGORY',
    'VSR_CATEGORIES', 'VSR_RELATIONS', 'vsr_relations', 'VsrExample', 'winoground_image_path', 'winoground_images_dir',
    'load_winoground', 'WinogroundExample',
]
