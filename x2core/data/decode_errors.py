"""What undecodable bytes look like, for one-line error messages.

PIL's "cannot identify image file <_io.BytesIO object at 0x7f...>" names a buffer,
not the data: these helpers say what the bytes are instead (a known file type from
its signature, text, or their first bytes). Kept free of torch and PIL so the packer
and ``inspect`` can use them cheaply.
"""
from __future__ import annotations

import re

# (signature at offset 0, what it is); an mp4's 'ftyp' box sits at offset 4.
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG"), (b"\x89PNG\r\n\x1a\n", "a PNG"), (b"GIF8", "a GIF"),
    (b"BM", "a BMP"), (b"%PDF", "a PDF"), (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"), (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (b"<", "markup (HTML/XML/SVG)"),
)
_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")
_QUOTED = 40  # characters of text quoted


def describe_bytes(data) -> str:
    """``"62 bytes that look like text: 'hello world...'"``, ``"1200 bytes of a PNG"``..."""
    data = bytes(data)
    n = len(data)
    if not n:
        return "0 bytes"
    if data[4:8] == b"ftyp":
        return f"{n} bytes of an MP4/MOV video"
    if data[:4] == b"RIFF":
        kind = {b"WEBP": "a WebP image", b"AVI ": "an AVI video"}.get(data[8:12], "a RIFF file")
        return f"{n} bytes of {kind}"
    for magic, kind in _SIGNATURES:
        if data.startswith(magic):
            return f"{n} bytes of {kind}"
    head = data[:256]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the 256-byte window is still text
        text = head[:exc.start].decode("utf-8") if exc.start > len(head) - 4 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        quoted = " ".join(text.split())[:_QUOTED]
        return f"{n} bytes that look like text: {quoted!r}" + ("..." if len(text) > _QUOTED else "")
    return f"{n} bytes starting {data[:8].hex(' ')}"


def decode_reason(exc: BaseException) -> str:
    """The decoder's message without the in-memory buffer's repr, on one line."""
    text = " ".join(_BUFFER_REPR.sub("", str(exc)).split())
    return text or type(exc).__name__

