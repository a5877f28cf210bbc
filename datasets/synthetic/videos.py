"""Short videos of one moving shape: "a red circle moves to the left".

Each video is a real mp4 (PyAV; H.264 without mb-tree, which made x264 non-deterministic, or MPEG-4 part 2
where libx264 is missing)
of ``frames`` frames in which one shape crosses the frame in a straight line, on the
scenes' backgrounds; a second, static shape may stand by as a distractor. Captions
(en/de/zh) name the moving shape and its direction; questions ask for the direction,
the colour and the kind. Everything is a pure function of ``(seed, split, index)``;
the encoder settings are fixed, so the same seed gives byte-identical files.
"""
from __future__ import annotations

import dataclasses
import io
import random

from .vocab import _DE_COLOR, _DE_ENDING, _DE_NOUN, _ZH_COLOR, _ZH_NOUN, COLORS, KINDS

DIRECTIONS = ("left", "right", "up", "down")
_DE_DIRECTION = {"left": "links", "right": "rechts", "up": "oben", "down": "unten"}
_ZH_DIRECTION = {"left": "向左", "right": "向右", "up": "向上", "down": "向下"}
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclasses.dataclass(frozen=True)
class Motion:
    kind: str
    color: str
    direction: str
    side: int
    start: tuple[int, int]           # top-left corner in frame 0
    speed: float                     # pixels per frame
    background: tuple[int, int, int]
    distractor: tuple[str, str, int, tuple[int, int]] | None  # kind, colour, side, xy


def video_caption(m: Motion, lang: str) -> str:
    if lang == "en":
        where = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}[m.direction]
        return f"a {m.color} {m.kind} moves {where}"
    if lang == "de":
        noun, gender = _DE_NOUN[m.kind]
        return f"ein {_DE_COLOR[m.color]}{_DE_ENDING[gender]} {noun} bewegt sich nach {_DE_DIRECTION[m.direction]}"
    if lang == "zh":
        return f"{_ZH_COLOR[m.color]}{_ZH_NOUN[m.kind]}{_ZH_DIRECTION[m.direction]}移动"
    raise ValueError(f"no video captions in {lang!r}")


def video_questions(m: Motion) -> list[tuple[str, str]]:
    return [(f"which way does the {m.color} {m.kind} move?", m.direction),
            ("what colour is the moving shape?", m.color),
            (f"what kind of shape is the moving {m.color} shape?", m.kind)]


def video_answer_list(colors=tuple(COLORS), kinds=KINDS) -> list[str]:
    return list(DIRECTIONS) + list(colors) + list(kinds)


def sample_motion(rng: random.Random, *, size: int, frames: int, kinds, colors, backgrounds) -> Motion:
    kind, color, direction = rng.choice(kinds), rng.choice(colors), rng.choice(DIRECTIONS)
    side = rng.randint(max(6, size // 5), max(7, size // 4))
    travel = size - side - 2               # the shape crosses most of the frame
    speed = travel / max(1, frames - 1) * rng.uniform(0.6, 1.0)
    span = int(speed * (frames - 1))
    dx, dy = _STEP[direction]
    lo, hi = 1, size - side - 1
    # start so that the whole path stays inside the frame
    x = (hi - rng.randint(0, hi - lo - span) if dx < 0 else lo + rng.randint(0, hi - lo - span)) \
        if dx else rng.randint(lo, hi)
    y = (hi - rng.randint(0, hi - lo - span) if dy < 0 else lo + rng.randint(0, hi - lo - span)) \
        if dy else rng.randint(lo, hi)
    distractor = None
    if rng.random() < 0.5:
        others = [c for c in colors if c != color]
        d_side = rng.randint(max(5, size // 6), max(6, size // 5))
        distractor = (rng.choice(kinds), rng.choice(others), d_side,
                      (rng.randint(1, size - d_side - 1), rng.randint(1, size - d_side - 1)))
    return Motion(kind, color, direction, side, (x, y), speed, rng.choice(backgrounds), distractor)


def render_frames(m: Motion, *, size: int, frames: int):
    """``frames`` RGB PIL images; the moving shape is drawn over the distractor."""
    from PIL import Image

    from .scenes import shape_mask

    out = []
    dx, dy = _STEP[m.direction]
    for t in range(frames):
        img = Image.new("RGB", (size, size), m.background)
        if m.distractor is not None:
            kind, color, side, (x, y) = m.distractor
            img.paste(COLORS[color], (x, y, x + side, y + side), shape_mask(kind, side)[0])
        x = int(round(m.start[0] + dx * m.speed * t))
        y = int(round(m.start[1] + dy * m.speed * t))
        img.paste(COLORS[m.color], (x, y, x + m.side, y + m.side), shape_mask(m.kind, m.side)[0])
        out.append(img)
    return out


def encode_mp4(images, fps: int = 8) -> bytes:
    """RGB PIL images -> mp4 bytes (H.264 crf 18, or MPEG-4 part 2 at q 2)."""
    try:
        import av
    except ImportError:
        raise RuntimeError("writing synthetic videos needs PyAV: pip install av") from None
    import numpy as np

    w, h = images[0].size
    for codec in ("libx264", "mpeg4"):
        buf = io.BytesIO()
        try:
            with av.open(buf, "w", format="mp4") as container:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = ({"crf": "18", "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
                                  if codec == "libx264"
                                  else {"qscale": "2", "threads": "1"})
                for img in images:
                    frame = av.VideoFrame.from_ndarray(np.asarray(img.convert("RGB")), format="rgb24")
                    for packet in stream.encode(frame):
                        container.mux(packet)
                for packet in stream.encode():
                    container.mux(packet)
            return buf.getvalue()
        except Exception:  # this PyAV build lacks the codec: try the next one
            continue
    raise RuntimeError("PyAV has neither libx264 nor mpeg4 encoders")


def write_videos(out_dir: str, cfg, rng_for, progress: bool = False) -> dict[str, str]:
    """Write ``cfg.num_videos`` training and ``cfg.num_heldout_videos`` held-out videos and
    their annotation files; returns ``{name: path}``. Held-out captions are distinct, so
    each retrieves exactly one video."""
    import json
    import os

    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    size, frames = cfg.image_size, cfg.video_frames
    kw = dict(size=size, frames=frames, kinds=cfg.kinds, colors=cfg.colors, backgrounds=cfg.backgrounds)
    train = [sample_motion(rng_for("video", "train", i), **kw) for i in range(cfg.num_videos)]
    heldout, seen = [], set()
    for j in range(max(1000, 50 * cfg.num_heldout_videos)):
        if len(heldout) == cfg.num_heldout_videos:
            break
        m = sample_motion(rng_for("video", "heldout", j), **kw)
        key = (m.kind, m.color, m.direction)
        if key not in seen:
            seen.add(key)
            heldout.append(m)
    if len(heldout) < cfg.num_heldout_videos:
        raise ValueError(f"only {len(heldout)} distinct video captions exist for these kinds and "
                         f"colours; lower num_heldout_videos ({cfg.num_heldout_videos})")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(train) + len(heldout), desc="synthetic videos", unit="video")
    paths = {}
    for split, motions in (("train", train), ("heldout", heldout)):
        paths[split] = []
        for i, m in enumerate(motions):
            rpath = f"videos/{split}_{i:06d}.mp4"
            with open(os.path.join(out_dir, rpath), "wb") as f:
                f.write(encode_mp4(render_frames(m, size=size, frames=frames), fps=cfg.video_fps))
            paths[split].append(rpath)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    def dump(name, rows, lines):
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            if lines:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                json.dump(rows, f, ensure_ascii=False)
                f.write("\n")
        return path

    files = {}
    files["pretrain_video_text"] = dump("pretrain_video_text.jsonl", [
        {"video": p, "caption": {lang: video_caption(m, lang) for lang in cfg.langs}}
        for m, p in zip(train, paths["train"])], True)
    files["heldout_video_retrieval"] = dump("heldout_video_retrieval.json", [  # MSRVTT layout
        {"video_id": p, "caption": [video_caption(m, "en" if "en" in cfg.langs else cfg.langs[0])]}
        for m, p in zip(heldout, paths["heldout"])], False)
    for split, motions in (("train", train), ("heldout", heldout)):
        rows, qid = [], 0
        for m, p in zip(motions, paths[split]):
            for question, answer in video_questions(m):
                rows.append({"video_id": p, "question": question, "answer": answer, "question_id": qid})
                qid += 1
        files[f"video_qa_{split}"] = dump(f"video_qa_{split}.jsonl", rows, True)
    files["video_answer_list"] = dump("video_answer_list.json",
                                      {a: i for i, a in enumerate(video_answer_list(cfg.colors, cfg.kinds))},
                                      False)
    files["videos"] = os.path.join(out_dir, "videos")
    return files
