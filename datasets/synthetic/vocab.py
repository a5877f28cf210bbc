"""Words and caption templates of the synthetic shapes world (en, de, zh).

Everything here is a pure function of a scene, so a caption is a deterministic function
of what is drawn. Shapes are listed in the scene's canonical order (kind, then colour),
and a scene never holds two shapes of the same colour and kind, so "the red circle"
always names exactly one shape.
"""
from __future__ import annotations

LANGS = ("en", "de", "zh")
KINDS = ("circle", "square", "triangle")
# Saturated colours, far from the dark backgrounds and from each other.
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 245),
    "yellow": (245, 220, 40),
    "white": (245, 245, 245),
    "purple": (170, 60, 220),
}
SIZES = ("small", "large")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")

# German: Kreis is masculine, Quadrat and Dreieck neuter; adjective endings after
# "ein" (nominative) and without article (strong) coincide: -er (m), -es (n).
_DE_NOUN = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n")}
_DE_COLOR = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
             "white": "weiß", "purple": "violett"}
_DE_SIZE = {"small": "klein", "large": "groß"}
_DE_ENDING = {"m": "er", "n": "es"}

_ZH_NOUN = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
_ZH_COLOR = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色",
             "white": "白色", "purple": "紫色"}
_ZH_SIZE = {"small": "小", "large": "大"}


def check_langs(langs) -> tuple[str, ...]:
    langs = tuple(langs)
    bad = [l for l in langs if l not in LANGS]
    if bad or not langs:
        raise ValueError(f"synthetic captions exist for {list(LANGS)}; got {list(langs)}")
    return langs


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str], lang: str) -> str:
    if len(items) == 1:
        return items[0]
    if lang == "zh":
        return "、".join(items[:-1]) + "和" + items[-1]
    conj = {"en": " and ", "de": " und "}[lang]
    return ", ".join(items[:-1]) + conj + items[-1]


def object_phrase(shape, lang: str) -> str:
    """One shape with an indefinite article, no size: "a red circle"."""
    if lang == "en":
        return f"{_article(shape.color)} {shape.color} {shape.kind}"
    if lang == "de":
        noun, gender = _DE_NOUN[shape.kind]
        return f"ein {_DE_COLOR[shape.color]}{_DE_ENDING[gender]} {noun}"
    return f"一个{_ZH_COLOR[shape.color]}的{_ZH_NOUN[shape.kind]}"


def region_caption(shape, lang: str) -> str:
    """Caption of one region, size included: "large red circle"."""
    if lang == "en":
        return f"{shape.size} {shape.color} {shape.kind}"
    if lang == "de":
        noun, gender = _DE_NOUN[shape.kind]
        end = _DE_ENDING[gender]
        return f"{_DE_SIZE[shape.size]}{end} {_DE_COLOR[shape.color]}{end} {noun}"
    return f"{_ZH_SIZE[shape.size]}的{_ZH_COLOR[shape.color]}{_ZH_NOUN[shape.kind]}"


def scene_caption(scene, lang: str) -> str:
    """Whole-image caption: "a red circle and a blue square"."""
    return _join([object_phrase(s, lang) for s in scene.shapes], lang)


def scene_to_captions(scene, lang: str) -> dict:
    """``{"caption": whole-image caption, "regions": [one caption per shape]}``."""
    check_langs([lang])
    return {"caption": scene_caption(scene, lang),
            "regions": [region_caption(s, lang) for s in scene.shapes]}
