"""A procedural, seed-deterministic shapes world that teaches multi-grained alignment.

Scenes of 1-3 coloured circles, squares and triangles on a dark background, with
whole-image captions, region captions with exact boxes (en/de/zh), VQA pairs and
NLVR statements, written in the reference annotation formats so they pack through
``x2vlm pack`` like real data::

    from x2datasets.synthetic import generate
    files = generate("data/synthetic", seed=0, num_train=3000, num_heldout=200)
    files["pretrain_regions"]   # -> data/synthetic/pretrain_regions.jsonl

Format names for ``x2vlm pack``: ``pretrain_image_text.jsonl`` -> ``image-text``,
``pretrain_regions.jsonl`` / ``heldout_grounding.jsonl`` -> ``regions``,
``heldout_retrieval*.json`` -> ``retrieval``, ``vqa_*.json`` -> ``vqa``,
``nlvr_*.json`` -> ``nlvr``; image paths are relative to the output directory.
"""
from .config import SyntheticConfig
from .generate import generate, heldout_scenes, train_scenes
from .scenes import Scene, Shape, render_scene, sample_scene
from .tasks import answer_list, nlvr_statement, scene_questions
from .vocab import COLORS, KINDS, LANGS, SIZES, region_caption, scene_caption, scene_to_captions

__all__ = [
    "SyntheticConfig", "generate", "train_scenes", "heldout_scenes",
    "Scene", "Shape", "sample_scene", "render_scene",
    "scene_to_captions", "scene_caption", "region_caption",
    "scene_questions", "answer_list", "nlvr_statement",
    "COLORS", "KINDS", "LANGS", "SIZES",
]
