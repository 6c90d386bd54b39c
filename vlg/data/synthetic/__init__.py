"""vlg's built-in synthetic world: rendered shapes with exact ground truth.

Modules: ``world`` (vocabulary, config, scene types), ``geometry`` (boxes and
the definitions of every relation), ``layout`` (random scenes, scenes from a
specification), ``edits`` (minimal-pair edits), ``render`` (pixels),
``language`` (captions, regions, paragraphs, referring expressions) and
``source`` (records and the grain data source). No jax anywhere here.
"""

from vlg.data.synthetic.edits import check_scene
from vlg.data.synthetic.edits import edit_object
from vlg.data.synthetic.edits import reverse_action
from vlg.data.synthetic.edits import swap_positions
from vlg.data.synthetic.edits import with_actions
from vlg.data.synthetic.geometry import relation_truth
from vlg.data.synthetic.geometry import RING_HOLE
from vlg.data.synthetic.geometry import TOUCH_SHAPES
from vlg.data.synthetic.geometry import true_relations
from vlg.data.synthetic.language import captions
from vlg.data.synthetic.language import noun_phrase
from vlg.data.synthetic.language import paragraph
from vlg.data.synthetic.language import referring_expression
from vlg.data.synthetic.language import regions
from vlg.data.synthetic.language import relation_phrase
from vlg.data.synthetic.language import relation_sentence
from vlg.data.synthetic.layout import generate_scene
from vlg.data.synthetic.layout import scene_from_spec
from vlg.data.synthetic.geometry import scene_graph
from vlg.data.synthetic.render import render_scene
from vlg.data.synthetic.source import make_record
from vlg.data.synthetic.source import scene_record
from vlg.data.synthetic.source import SyntheticSource
from vlg.data.synthetic.world import Action
from vlg.data.synthetic.world import Background
from vlg.data.synthetic.world import CATEGORIES
from vlg.data.synthetic.world import COLOURS
from vlg.data.synthetic.world import DRAWN_RELATIONS
from vlg.data.synthetic.world import ObjectSpec
from vlg.data.synthetic.world import PALETTE
from vlg.data.synthetic.world import PlacementError
from vlg.data.synthetic.world import RELATIONS
from vlg.data.synthetic.world import Scene
from vlg.data.synthetic.world import SceneObject
from vlg.data.synthetic.world import SIZES
from vlg.data.synthetic.world import WorldConfig
