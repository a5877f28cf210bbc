"""VQA question/answer pairs about one scene and NLVR statements about a pair (English).

Answers and labels are computed from the scene, never sampled; the RNG only chooses
which question or statement to ask (and aims NLVR labels at a 50/50 balance).
"""
from __future__ import annotations

import random

from .scenes import Scene
from .vocab import COLORS, KINDS, NUMBERS, SIZES


def answer_list() -> list[str]:
    """Every answer a synthetic VQA question can have (the ``answer_list.json``)."""
    return ["yes", "no", *COLORS, *KINDS, *SIZES, *NUMBERS[:4]]


def _plural(kind: str) -> str:
    return kind + "s"


def _question_makers(scene: Scene, kinds, colors):
    """question type -> function(rng) -> (question, answer), for types that apply."""
    def count(rng):
        return "how many shapes are there?", NUMBERS[len(scene.shapes)]

    def count_kind(rng):
        kind = rng.choice(kinds)
        return f"how many {_plural(kind)} are there?", NUMBERS[scene.count(kind=kind)]

    def has_kind(rng):
        kind = rng.choice(kinds)
        return f"is there a {kind}?", "yes" if scene.count(kind=kind) else "no"

    makers = {"count": count, "count_kind": count_kind, "has_kind": has_kind}

    def has_pair(rng):
        present = [(s.kind, s.color) for s in scene.shapes]
        absent = [(k, c) for k in kinds for c in colors if (k, c) not in present]
        kind, color = rng.choice(present if rng.random() < 0.5 or not absent else absent)
        return f"is there a {color} {kind}?", "yes" if scene.find(kind, color) else "no"
    makers["has_pair"] = has_pair

    unique_kinds = [k for k in kinds if scene.count(kind=k) == 1]
    if unique_kinds:
        def color_of(rng):
            kind = rng.choice(unique_kinds)
            (color,) = [s.color for s in scene.shapes if s.kind == kind]
            return f"what color is the {kind}?", color
        makers["color_of"] = color_of
    unique_colors = [c for c in colors if scene.count(color=c) == 1]
    if unique_colors:
        def kind_of(rng):
            color = rng.choice(unique_colors)
            return (f"what shape is the {color} object?",
                    next(s.kind for s in scene.shapes if s.color == color))
        makers["kind_of"] = kind_of

    def size_of(rng):
        s = rng.choice(scene.shapes)
        return f"what size is the {s.color} {s.kind}?", s.size
    makers["size_of"] = size_of
    return makers


def scene_questions(scene: Scene, rng: random.Random, k: int, *, kinds=KINDS,
                    colors=tuple(COLORS)) -> list[tuple[str, str]]:
    """Up to ``k`` questions of different types, each with its one correct answer."""
    makers = _question_makers(scene, kinds, colors)
    types = rng.sample(sorted(makers), min(k, len(makers)))
    return [makers[t](rng) for t in types]


def _statement(left: Scene, right: Scene, rng: random.Random, kinds, colors) -> tuple[str, bool]:
    side = {"left": left, "right": right}
    kind, color = rng.choice(kinds), rng.choice(colors)
    a, b = rng.sample(["left", "right"], 2)
    template = rng.randrange(7)
    if template == 0:
        return (f"the {a} image contains more {_plural(kind)} than the {b} image",
                side[a].count(kind=kind) > side[b].count(kind=kind))
    if template == 1:
        return (f"both images contain a {kind}",
                bool(left.count(kind=kind) and right.count(kind=kind)))
    if template == 2:
        return (f"neither image contains a {color} shape",
                not (left.count(color=color) or right.count(color=color)))
    if template == 3:
        return ("the two images contain the same number of shapes",
                len(left.shapes) == len(right.shapes))
    if template == 4:
        s = rng.choice(side[b].shapes) if rng.random() < 0.5 else None
        kind, color = (s.kind, s.color) if s else (kind, color)
        return f"the {a} image contains a {color} {kind}", side[a].find(kind, color) is not None
    if template == 5:
        n = rng.randint(2, 6)
        return (f"there are {NUMBERS[n]} shapes in the two images together",
                len(left.shapes) + len(right.shapes) == n)
    return (f"the {a} image contains more shapes than the {b} image",
            len(side[a].shapes) > len(side[b].shapes))


def nlvr_statement(left: Scene, right: Scene, rng: random.Random, *, want: bool | None = None,
                   kinds=KINDS, colors=tuple(COLORS), tries: int = 50) -> tuple[str, bool]:
    """A statement about the pair and whether it holds; with ``want`` the RNG is asked
    again (up to ``tries`` times) until the label equals ``want``."""
    for _ in range(tries):
        sentence, label = _statement(left, right, rng, kinds, colors)
        if want is None or label == want:
            break
    return sentence, bool(label)
