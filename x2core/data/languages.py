"""Language keys of multilingual captions (``{"en": ..., "zh-cn": ...}``).

A key is a BCP-47-style tag: an ISO 639 language (``de``; ISO 639-3 for languages
without a two-letter code, ``yue``) and optional subtags -- a script (``zh-Hans``),
a region (``pt-BR``, ``es-419``) or a variant. Keys are stored lower case with ``-``
(``zh_CN`` -> ``zh-cn``). The language must be a known code, so a typo (``eng``,
``ge``) or a field name taken for a language (``xyz``) is an error with a
"did you mean" hint, not a new language.

The known codes come from ``langcodes`` (or ``pycountry``) when installed; otherwise
from the table below: every ISO 639-1 code plus the ISO 639-3 codes of languages in
the multilingual benchmarks the formats read (Multi30K, xFlickr&CO, WIT, MaRVL, xGQA,
XVNLI) and other widely used ones.
"""
from __future__ import annotations

import functools
import re
from typing import Any

# 2-3 letter primary tag, then optional subtags: en, de, zh-cn, pt_BR, zh-Hans, es-419.
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")

# ISO 639-1 (all 183 codes; iw/in/ji are the withdrawn codes of he/id/yi, still seen).
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv
cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho
hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku
kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn
no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm
sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi
vo wa wo xh yi yo za zh zu iw in ji sh mo
""".split())

# ISO 639-3 codes accepted without a two-letter form: Chinese varieties, Filipino,
# and languages of the multilingual benchmarks / common crawls with no 639-1 code.
ISO_639_3 = frozenset("""
yue cmn wuu hak nan gan hsn lzh fil ceb haw hmn ilo war pam bcl jbo sco
ast ckb kmr sdh zsm min ace ban bjn bug mad tet
nso luo kam kik mer swh
arz ary arq apc ajp acm afb
fur lmo lij scn vec nap pms egl rgn srd
hif bho mai mag awa raj gom mni sat doi kok
und mul zxx
""".split())


@functools.lru_cache(maxsize=1)
def _package_lookup():
    """``code -> canonical primary tag | None`` from an installed ISO 639 package, else None.

    A package knows every ISO 639-3 code, and maps a three-letter code of a language that
    has a two-letter one to it (``eng`` -> ``en``), so one language gets one key.
    """
    try:
        import langcodes
    except ImportError:
        langcodes = None
    if langcodes is not None:
        def lookup(code):
            if not langcodes.tag_is_valid(code):
                return None
            return langcodes.standardize_tag(code).lower()
        return lookup
    try:
        import pycountry
    except ImportError:
        return None

    def lookup(code):
        found = pycountry.languages.get(**{"alpha_2" if len(code) == 2 else "alpha_3": code})
        return None if found is None else getattr(found, "alpha_2", code)
    return lookup


def _primary(code: str) -> str | None:
    """The canonical form of a lower-case primary tag, or None when it is not ISO 639."""
    lookup = _package_lookup()
    if lookup is not None:
        try:
            found = lookup(code)
        except Exception:  # noqa: BLE001 - a package quirk must not reject a table code
            found = None
        if found:
            return found
    return code if code in ISO_639_1 or code in ISO_639_3 else None


def normalize_lang(key: Any) -> str | None:
    """``"zh_CN"`` -> ``"zh-cn"``; ``None`` when ``key`` is not a language code.

    The primary tag must be a known ISO 639 code (``xyz`` is not); subtags (script,
    region, variant) are 2-8 letters or digits.
    """
    if not isinstance(key, str) or not _LANG_RE.match(key):
        return None
    parts = key.lower().replace("_", "-").split("-")
    primary = _primary(parts[0])
    if primary is None:
        return None
    return "-".join([primary] + parts[1:])


def looks_like_lang(key: Any) -> bool:
    """Shaped like a language tag (``xyz``, ``pt_BR``), known or not."""
    return isinstance(key, str) and bool(_LANG_RE.match(key))


def lang_hint(key: Any) -> str:
    """``"; did you mean 'en'?"`` for a key that is not a language code, or ``""``."""
    from x2core.errors import did_you_mean

    if not isinstance(key, str):
        return ""
    primary = key.lower().replace("_", "-").split("-")[0]
    return did_you_mean(primary, sorted(ISO_639_1 | ISO_639_3))
