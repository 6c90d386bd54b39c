"""vlg's built-in synthetic world: rendered shapes with exact ground truth.

Modules: ``world`` (vocabulary, config, scene types), ``geometry`` (boxes and
the definitions of every relation), ``layout`` (random scenes, scenes from a
specification), ``edits`` (minimal-pair edits), ``render`` (pixels),
``language`` (captions, regions, paragraphs, referring expressions) and
``source`` (records and the grain data source); ``benchmarks`` writes the
benchmark look-alikes. No jax anywhere here, and nothing of vlg outside
this package: the data pipeline reads the world (``vlg.data.sources``),
never the other way round.
"""

from vlg.synthetic.edits import check_scene
from vlg.synthetic.edits import edit_object
from vlg.synthetic.edits import reverse_action
from vlg.synthetic.edits import swap_positions
from vlg.synthetic.edits import with_actions
from vlg.synthetic.geometry import relation_truth
from vlg.synthetic.geometry import RING_HOLE
from vlg.synthetic.geometry import TOUCH_SHAPES
from vlg.synthetic.geometry import true_relations
from vlg.synthetic.language import captions
from vlg.synthetic.language import noun_phrase
from vlg.synthetic.language import paragraph
from vlg.synthetic.language import referring_expression
from vlg.synthetic.language import regions
from vlg.synthetic.language import relation_phrase
from vlg.synthetic.language import relation_sentence
from vlg.synthetic.layout import generate_scene
from vlg.synthetic.layout import scene_from_spec
from vlg.synthetic.geometry import scene_graph
from vlg.synthetic.render import render_scene
from vlg.synthetic.source import make_record
from vlg.synthetic.source import scene_record
from vlg.synthetic.source import SyntheticSource
from vlg.synthetic.world import Action
from vlg.synthetic.world import Background
from vlg.synthetic.world import CATEGORIES
from vlg.synthetic.world import COLOURS
from vlg.synthetic.world import DRAWN_RELATIONS
from vlg.synthetic.world import ObjectSpec
from vlg.synthetic.world import PALETTE
from vlg.synthetic.world import PlacementError
from vlg.synthetic.world import RELATIONS
from vlg.synthetic.world import Scene
from vlg.synthetic.world import SceneObject
from vlg.synthetic.world import SIZES
from vlg.synthetic.world import WorldConfig
