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

from vlg.data.benchmarks.common import BenchmarkFormatError
from vlg.data.benchmarks.common import check_images
from vlg.data.benchmarks.common import image_path
from vlg.data.benchmarks.common import Loaded
from vlg.data.benchmarks.refcocog import load_refcocog
from vlg.data.benchmarks.refcocog import RefExample
from vlg.data.benchmarks.retrieval import load_paragraphs
from vlg.data.benchmarks.retrieval import load_retrieval
from vlg.data.benchmarks.retrieval import paragraph_retrieval_set
from vlg.data.benchmarks.retrieval import ParagraphExample
from vlg.data.benchmarks.retrieval import RetrievalSet
from vlg.data.benchmarks.svo_probes import load_svo_probes
from vlg.data.benchmarks.svo_probes import SvoExample
from vlg.data.benchmarks.valse import load_valse
from vlg.data.benchmarks.valse import VALSE_PIECE_ORDER
from vlg.data.benchmarks.valse import VALSE_PIECES
from vlg.data.benchmarks.valse import valse_piece
from vlg.data.benchmarks.valse import ValseExample
from vlg.data.benchmarks.vsr import categorise_relations
from vlg.data.benchmarks.vsr import load_vsr
from vlg.data.benchmarks.vsr import load_vsr_categories
from vlg.data.benchmarks.vsr import VSR_CATEGORIES
from vlg.data.benchmarks.vsr import UNKNOWN_CATEGORY
from vlg.data.benchmarks.vsr import VSR_RELATIONS
from vlg.data.benchmarks.vsr import vsr_relations
from vlg.data.benchmarks.vsr import VsrExample
from vlg.data.benchmarks.winoground import image_path as winoground_image_path
from vlg.data.benchmarks.winoground import images_dir as winoground_images_dir
from vlg.data.benchmarks.winoground import load_winoground
from vlg.data.benchmarks.winoground import WinogroundExample

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
