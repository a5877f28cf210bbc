"""Language keys of multilingual captions (``{"en": ..., "zh-cn": ...}``)."""
from __future__ import annotations

import re
from typing import Any

# 2-3 letter primary tag, then optional BCP-47-ish subtags: en, de, zh-cn, pt_BR, zh-Hans.
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def normalize_lang(key: Any) -> str | None:
    """``"zh_CN"`` -> ``"zh-cn"``; ``None`` when ``key`` is not a language code."""
    if isinstance(key, str) and _LANG_RE.match(key):
        return key.lower().replace("_", "-")
    return None
