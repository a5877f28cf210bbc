"""Video decoding from LMDB records: real mp4s (PyAV-encoded, decoded by decord from
memory) and pre-extracted JPEG frames, packed through ``x2vlm pack``; the frames each
sampler picks and their pixels; bad input; decord missing."""
from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
import types

import numpy as np
import pytest

from x2core.errors import InputError, X2Error
from x2core.data.packing import RecordError, pack
from x2core.data.store import LmdbReader
from x2core.data.video_decode import get_frame_sampler, load_video_frames, video_info

from _data_files import colour, frame_array, mp4_bytes, write_jsonl

av = pytest.importorskip("av")
SIZE, FPS = 32, 8  # mp4_bytes' defaults
TOL = 12        # H.264 / yuv420p on flat colours: a few levels; JPEG q95 likewise


def jpeg(k: int, size: int = SIZE) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(frame_array(k, size)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def assert_frames(frames: np.ndarray, idx: list[int]):
    assert frames.dtype == np.uint8 and frames.shape == (len(idx), SIZE, SIZE, 3)
    for f, k in zip(frames, idx):
        mean = f.reshape(-1, 3).mean(0)
        assert np.abs(mean - colour(k)).max() <= TOL, (k, mean, colour(k))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One store per form, same 16-frame video: mp4, frames JSON (MSRVTT-QA and MSVD-QA
    names), frame directory; plus a 3-frame mp4 for the padding rule."""
    root = tmp_path_factory.mktemp("video_io")
    img = root / "img"
    img.mkdir()
    (img / "video0.mp4").write_bytes(mp4_bytes(16))
    (img / "short.mp4").write_bytes(mp4_bytes(3))
    b64 = [base64.b64encode(jpeg(k)).decode() for k in range(16)]
    (img / "video_1.json").write_text(json.dumps(b64))          # MSRVTT-QA: video_{id}.json
    (img / "clipA.json").write_text(json.dumps(b64))            # MSVD-QA: {video_id}.json
    (img / "clipB").mkdir()
    for k in range(16):
        (img / "clipB" / f"frame_{k:04d}.jpg").write_bytes(jpeg(k))
    ann = write_jsonl(root / "vt.jsonl", [
        {"video_id": "video0", "caption": "mp4"},
        {"video_id": "1", "caption": "msrvtt-qa style frames"},   # no video1.mp4: frames JSON
        {"video_id": "clipA", "caption": "msvd-qa style frames"},
        {"video_id": "clipB", "caption": "frame directory"},
        {"video": "short.mp4", "caption": "three frames"},
    ])
    report = pack("video-text", [ann], str(img), str(root / "store"), progress=False)
    assert report["count"] == 5
    reader = LmdbReader(root / "store")
    return {"reader": reader, "records": [reader[i] for i in range(len(reader))], "root": root}


def test_pack_stores_mp4_bytes_or_jpeg_frames(stores):
    recs = stores["records"]
    assert "video" in recs[0] and "frames" not in recs[0]
    for r in recs[1:4]:
        assert "video" not in r and len(r["frames"]) == 16
        assert all(isinstance(f, bytes) and f[:2] == b"\xff\xd8" for f in r["frames"])
    assert recs[1]["frames"] == recs[2]["frames"] == recs[3]["frames"]
    assert video_info(recs[0]) == (16, pytest.approx(FPS))
    assert video_info(recs[1]) == (16, None)


@pytest.mark.parametrize("name", ["segment", "uniform", "head-tail", "fps"])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("form", [0, 1, 2, 3], ids=["mp4", "json-msrvtt", "json-msvd", "dir"])
def test_sampled_indices_and_pixels(stores, name, training, form):
    rec = stores["records"][form]
    sampler = get_frame_sampler(name, **({"target_fps": 2} if name == "fps" else {}))
    fps = FPS if form == 0 else None
    for seed in range(3):
        want = sampler(16, 5, training=training, rng=random.Random(seed), fps=fps)
        frames, idx = load_video_frames(rec, 5, sampler=sampler, training=training,
                                        rng=random.Random(seed), where="W")
        assert idx == want
        assert_frames(frames, idx)
    if name == "fps" and not training:
        assert idx == ([0, 4, 8, 12, 15] if form == 0 else [0, 1, 2, 3, 4])   # 8 fps -> 2 fps


def test_mp4_and_frames_agree(stores):
    seg = get_frame_sampler("segment")
    a, ia = load_video_frames(stores["records"][0], 8, sampler=seg, training=False, rng=random.Random(0))
    b, ib = load_video_frames(stores["records"][3], 8, sampler=seg, training=False, rng=random.Random(0))
    assert ia == ib == [0, 2, 4, 6, 8, 10, 12, 14]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2 * TOL


def test_short_video_follows_the_padding_rule(stores):
    rec = stores["records"][4]
    assert video_info(rec)[0] == 3
    seg = get_frame_sampler("segment")
    frames, idx = load_video_frames(rec, 8, sampler=seg, training=False, rng=random.Random(0))
    assert idx == [0, 0, 0, 1, 1, 1, 2, 2]          # eval cycles 0 1 2 0 1 2 0 1, sorted
    assert_frames(frames, idx)
    frames, idx = load_video_frames(rec, 8, sampler=seg, training=True, rng=random.Random(3))
    assert set(idx) == {0, 1, 2} and idx == sorted(idx)   # train: every frame + random ones
    assert_frames(frames, idx)


# --- bad input -------------------------------------------------------------------------------

WHERE = "store/path: record 12 (from file.jsonl, entry 3)"


def _err(record, n=3):
    with pytest.raises(InputError) as info:
        load_video_frames(record, n, sampler=get_frame_sampler("segment"), training=False,
                          rng=random.Random(0), where=WHERE)
    msg = str(info.value)
    assert WHERE in msg and "Traceback" not in msg and "\n" not in msg
    exc = info.value            # no decord/PIL traceback chained to it
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    return msg


def test_corrupt_and_truncated_mp4(stores):
    good = stores["records"][0]["video"]
    assert "field 'video'" in _err({"video": good[: len(good) // 2]})
    assert "field 'video'" in _err({"video": b"\x00\x00\x00\x18ftypisom" + b"garbage" * 20})
    with pytest.raises(InputError, match="field 'video'"):
        video_info({"video": good[:200]}, where=WHERE)


def test_zero_frames(monkeypatch):
    assert "field 'frames'" in _err({"frames": []})

    class EmptyReader:                       # a container decord opens but finds no frame in
        def __init__(self, *a, **k):
            pass

        def __len__(self):
            return 0

        def get_avg_fps(self):
            return 25.0

    monkeypatch.setitem(sys.modules, "decord", types.SimpleNamespace(VideoReader=EmptyReader))
    msg = _err({"video": b"\x00\x00\x00\x18ftypisom"})
    assert "field 'video'" in msg and "zero frames" in msg


def test_record_without_video():
    msg = _err({"texts": {"en": ["a caption"]}, "source": {"file": "x", "index": 1}})
    assert "'video'" in msg and "'frames'" in msg


def test_undecodable_jpeg_frame():
    frames = [jpeg(k) for k in range(6)]
    frames[2] = frames[2][: len(frames[2]) // 2]
    assert "frames[2]" in _err({"frames": frames}, n=6)
    frames[2] = b"not an image"
    assert "frames[2]" in _err({"frames": frames}, n=6)
    # frames that are not sampled are never decoded
    out, idx = load_video_frames({"frames": frames}, 2, sampler=get_frame_sampler("segment"),
                                 training=False, rng=random.Random(0))
    assert idx == [0, 3]


def test_decord_missing_gives_the_install_hint(monkeypatch, stores):
    monkeypatch.setitem(sys.modules, "decord", None)        # `import decord` raises ImportError
    with pytest.raises(X2Error, match=r"pip install decord") as info:
        load_video_frames(stores["records"][0], 3, sampler=get_frame_sampler("segment"),
                          training=False, rng=random.Random(0), where=WHERE)
    assert "x2vlm[video]" in str(info.value)
    # pre-extracted frames need no decord
    frames, _ = load_video_frames(stores["records"][1], 3, sampler=get_frame_sampler("segment"),
                                  training=False, rng=random.Random(0))
    assert frames.shape[0] == 3


def test_video_io_imports_without_decord():
    code = ("import sys; sys.modules['decord'] = None\n"
            "import x2core.data.video_decode, x2core.data.video_datasets, x2core.data.datasets\n"
            "import x2plugins.frame_samplers\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = "import sys, x2core.data.video_decode, x2core.data.video_datasets; print('decord' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# --- packing pre-extracted frames: errors name the file, line and field ---------------------

def test_frame_pack_errors(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    good = base64.b64encode(jpeg(0)).decode()
    (img / "video_7.json").write_text(json.dumps([good, good, "%%% not base64"]))
    (img / "bad.json").write_text(json.dumps([good, base64.b64encode(jpeg(1)[:300]).decode()]))
    (img / "notlist.json").write_text(json.dumps({"frames": [good]}))
    (img / "emptydir").mkdir()
    (img / "baddir").mkdir()
    (img / "baddir" / "0001.jpg").write_bytes(jpeg(0))
    (img / "baddir" / "0002.jpg").write_bytes(b"\xff\xd8 broken")
    cases = [("7", r"frames\[2\]: .*video_7.json: not valid base64"),
             ("bad", r"frames\[1\]: corrupt or unreadable image.*bad.json"),
             ("notlist", r"video_id: .*notlist.json: expected a non-empty JSON list"),
             ("emptydir", r"video_id: frame directory .*emptydir holds no"),
             ("baddir", r"frames\[1\]: corrupt or unreadable image.*0002.jpg"),
             ("missing", r"video_id: video file not found.*video_missing.json")]
    for i, (vid, pattern) in enumerate(cases):
        ann = write_jsonl(tmp_path / f"a{i}.jsonl", [{"video_id": vid, "question": "q?", "answer": "a"}])
        with pytest.raises(RecordError, match=rf"a{i}.jsonl:1: {pattern}"):
            pack("video-qa", [ann], str(img), str(tmp_path / f"s{i}"), progress=False)


def test_frames_downsized_with_max_side(tmp_path):
    img = tmp_path / "img"
    (img / "big").mkdir(parents=True)
    for k in range(4):
        (img / "big" / f"{k}.jpg").write_bytes(jpeg(k, size=64))
    ann = write_jsonl(tmp_path / "a.jsonl", [{"video_id": "big", "question": "q?", "answer": "a"}])
    pack("video-qa", [ann], str(img), str(tmp_path / "s"), progress=False, max_side=SIZE)
    rec = LmdbReader(tmp_path / "s")[0]
    frames, idx = load_video_frames(rec, 4, sampler=get_frame_sampler("segment"), training=False,
                                    rng=random.Random(0))
    assert_frames(frames, idx)          # 64 px stored as 32 px
    assert os.path.isdir(img / "big")


def test_inspect_describes_frame_records_without_dumping_bytes():
    import io as _io

    from PIL import Image as _Image

    from x2core.cli.inspect import describe
    buf = _io.BytesIO()
    _Image.new("RGB", (8, 6)).save(buf, format="JPEG")
    out = describe({"frames": [buf.getvalue()] * 3, "video_id": "v1"})
    assert out["frames"].startswith("3 encoded frames") and "JPEG 8x6" in out["frames"]
    assert out["video_id"] == "v1"
