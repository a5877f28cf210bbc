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


def image_folder(root, n=4, size=(64, 48)) -> list[str]:
    """``n`` JPEGs ``root/img{i}.jpg`` of distinct colours; returns the relative names."""
    names = []
    for i in range(n):
        write_jpeg(os.path.join(root, f"img{i}.jpg"), size, ((40 * i) % 256, 100, 50))
        names.append(f"img{i}.jpg")
    return names


def colour(k: int) -> tuple[int, int, int]:
    """Video frame k's flat colour: R counts frames, G the other way, B fixed (channel order)."""
    return (8 + 15 * k, 247 - 15 * k, 128)


def frame_array(k: int, size: int = 32):
    import numpy as np

    return np.broadcast_to(np.array(colour(k), np.uint8), (size, size, 3)).copy()


def mp4_bytes(n: int, size: int = 32, fps: int = 8) -> bytes:
    """A real H.264 (else MPEG-4) mp4 of ``n`` flat-colour frames (needs PyAV); ``n=0``
    gives a container with a video stream and no frame."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        if s.codec_context.name == "libx264":
            s.options = {"crf": "10", "preset": "veryfast"}
        if n == 0:
            c.start_encoding()  # write the header (ftyp + moov) of a video with no frame
        for k in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_array(k, size), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test's gloo rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_shape_classification_store(regions_store, out) -> str:
    """An image + label store from a packed synthetic regions store: the label is the
    kind of each scene's largest shape, the classes circle / square / triangle."""
    from x2core.data.store import LmdbReader, LmdbWriter

    reader = LmdbReader(str(regions_store))
    with LmdbWriter(str(out)) as w:
        for i in range(len(reader)):
            rec = reader[i]
            big = max(rec["regions"], key=lambda g: g["bbox"][2] * g["bbox"][3])
            w.append({"image": rec["image"], "label": big["texts"]["en"][0].split()[-1]})
        w.finish({"classes": ["circle", "square", "triangle"]})
    return str(out)
