"""Tiny files in the real annotation formats, made in a test's tmp_path."""
from __future__ import annotations

import base64
import io
import json
import os


def jpeg_bytes(size=(64, 48), color=(200, 30, 30), quality=90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg(path, size=(64, 48), color=(200, 30, 30)) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(jpeg_bytes(size, color))
    return path


def write_corrupt_jpeg(path) -> str:
    """A JPEG cut in half: the header parses, the decode fails."""
    data = jpeg_bytes((64, 64), (10, 200, 10))
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    return os.fspath(path)


def b64_jpeg(size=(64, 48), color=(10, 10, 200)) -> str:
    return base64.b64encode(jpeg_bytes(size, color)).decode()


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return os.fspath(path)


def write_json(path, obj) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False)
    return os.fspath(path)


def fake_mp4(payload: bytes = b"\x00" * 64) -> bytes:
    """The first boxes of an MP4 ('ftyp' then 'mdat'); enough for the packer, not a player."""
    ftyp = (24).to_bytes(4, "big") + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    mdat = (8 + len(payload)).to_bytes(4, "big") + b"mdat" + payload
    return ftyp + mdat


def image_folder(root, n=4, size=(64, 48)) -> list[str]:
    """``n`` JPEGs ``root/img{i}.jpg`` of distinct colours; returns the relative names."""
    names = []
    for i in range(n):
        write_jpeg(os.path.join(root, f"img{i}.jpg"), size, ((40 * i) % 256, 100, 50))
        names.append(f"img{i}.jpg")
    return names
