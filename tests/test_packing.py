"""`x2vlm pack` / `x2vlm inspect`: bad input, --skip-bad, resume, re-runs, and a real kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import lmdb
import pytest

from x2core.cli.app import main
from x2core.data.packing import REPORT_FILE, RecordError, pack
from x2core.data.store import PROGRESS_KEY, LmdbReader, LmdbWriter, UnfinishedStoreError, decode

from _data_files import image_folder, jpeg_bytes, write_corrupt_jpeg, write_json, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _good_rows(names, n):
    return [{"caption": f"caption {i}", "image_rpath": names[i % len(names)]} for i in range(n)]


# --- bad input: one line naming file, record and field ------------------------------------

BAD_CASES = {
    "corrupt-jpeg": ({"caption": "c", "image_rpath": "corrupt.jpg"}, "image_rpath",
                     "corrupt or unreadable image"),
    "missing-file": ({"caption": "c", "image_rpath": "nope.jpg"}, "image_rpath",
                     "image file not found"),
    "box-outside": ({"caption": "c", "image_rpath": "img0.jpg",
                     "elems": [{"caption": "ok", "bb": [0, 0, 5, 5]},
                               {"caption": "far", "bb": [60, 40, 30, 30]}]}, "elems[1].bb",
                    "box [60, 40, 30, 30] lies outside the 64x48 image"),
    "empty-caption": ({"caption": "   ", "image_rpath": "img0.jpg"}, "caption", "empty caption"),
    "unknown-language": ({"caption": {"en": "x", "english!": "y"}, "image_rpath": "img0.jpg"},
                         "caption.english!", "unknown language key"),
}


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "img"
    names = image_folder(root, 3)
    write_corrupt_jpeg(root / "corrupt.jpg")
    return root, names


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_record_is_one_line_naming_file_line_field(tmp_path, capsys, images, case):
    root, names = images
    bad, field, message = BAD_CASES[case]
    rows = _good_rows(names, 3) + [bad] + _good_rows(names, 2)
    rows = [dict(r, elems=r.get("elems", [{"caption": "r", "bb": [1, 1, 5, 5]}])) for r in rows]
    ann = write_jsonl(tmp_path / "ann.jsonl", rows)
    rc, out, err = _cli(capsys, "pack", "regions", "--ann", ann, "--images", str(root),
                        "--out", str(tmp_path / "s"), "--no-progress")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"x2vlm pack: error: {os.path.abspath(ann)}:4: {field}: {message}")
    assert "--skip-bad" in lines[0] and "Traceback" not in err
    # the three good records before it were committed; the store is resumable, not finished
    with pytest.raises(UnfinishedStoreError):
        LmdbReader(tmp_path / "s")


def test_bad_json_line_and_json_list_index(tmp_path, capsys, images):
    root, names = images
    ann = write_jsonl(tmp_path / "a.jsonl", _good_rows(names, 1) + ['{"caption": "x", oops'])
    rc, _, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images", str(root),
                      "--out", str(tmp_path / "s1"))
    assert rc == 2 and f"{os.path.abspath(ann)}:2: (line): not valid JSON" in err
    lst = write_json(tmp_path / "r.json", [{"image": names[0], "caption": ["ok"]},
                                          {"image": names[1], "caption": []}])
    rc, _, err = _cli(capsys, "pack", "retrieval", "--ann", lst, "--images", str(root),
                      "--out", str(tmp_path / "s2"))
    assert rc == 2 and f"{os.path.abspath(lst)}[1]: caption: empty caption list" in err
    rc, _, err = _cli(capsys, "pack", "image-text", "--ann", str(tmp_path / "none.jsonl"),
                      "--out", str(tmp_path / "s3"))
    assert rc == 2 and "annotation file not found" in err and len(err.splitlines()) == 1


def test_skip_bad_counts_in_meta_and_report(tmp_path, capsys, images):
    root, names = images
    bads = [dict(b, elems=b.get("elems", [{"caption": "r", "bb": [1, 1, 5, 5]}]))
            for b, _, _ in BAD_CASES.values()]
    good = [dict(r, elems=[{"caption": "r", "bb": [1, 1, 5, 5]}]) for r in _good_rows(names, 4)]
    rows = [good[0], bads[0], good[1], bads[1], bads[2], good[2], bads[3], bads[4], good[3]]
    ann = write_jsonl(tmp_path / "ann.jsonl", rows)
    rc, out, err = _cli(capsys, "pack", "regions", "--ann", ann, "--images", str(root),
                        "--out", str(tmp_path / "s"), "--skip-bad", "--no-progress")
    assert rc == 0, err
    assert "packed 4 records" in out and "skipped 5 bad records" in err
    r = LmdbReader(tmp_path / "s")
    assert len(r) == 4 and [x["texts"]["en"][0] for x in r] == [f"caption {i}" for i in range(4)]
    skipped = r.meta["skipped"]
    assert skipped["count"] == 5 and r.meta["raw_entries"] == 9
    assert skipped["by_field"] == {"image_rpath": 2, "elems[1].bb": 1, "caption": 1,
                                   "caption.english!": 1}
    report = json.loads((tmp_path / "s" / REPORT_FILE).read_text())
    assert report["count"] == 4 and report["skipped"]["count"] == 5
    assert [(s["line"], s["field"]) for s in report["skipped"]["records"]] == [
        (2, "image_rpath"), (4, "image_rpath"), (5, "elems[1].bb"), (7, "caption"),
        (8, "caption.english!")]
    assert all(s["file"] == os.path.abspath(ann) for s in report["skipped"]["records"])


def test_failed_pack_resumes_with_skip_bad_without_duplicates(tmp_path, images):
    root, names = images
    rows = _good_rows(names, 7) + [{"caption": "", "image_rpath": names[0]}] + _good_rows(names, 12)[7:]
    ann = write_jsonl(tmp_path / "ann.jsonl", rows)
    out = str(tmp_path / "s")
    with pytest.raises(RecordError) as err:
        pack("image-text", [ann], str(root), out, commit_every=3, progress=False)
    assert err.value.index == 8 and err.value.field == "caption"
    report = pack("image-text", [ann], str(root), out, commit_every=3, progress=False, skip_bad=True)
    assert report["resumed_from"] == 7 and report["count"] == 12
    assert report["skipped"]["count"] == 1 and report["raw_entries"] == 13
    texts = [x["texts"]["en"][0] for x in LmdbReader(out)]
    assert texts == [f"caption {i}" for i in range(12)]


def test_rerun_is_noop_other_args_error_or_overwrite(tmp_path, capsys, images):
    root, names = images
    ann = write_jsonl(tmp_path / "ann.jsonl", _good_rows(names, 5))
    base = ["pack", "image-text", "--ann", ann, "--images", str(root), "--out", str(tmp_path / "s"),
            "--no-progress"]
    assert _cli(capsys, *base)[0] == 0
    mtime = os.path.getmtime(tmp_path / "s" / "data.mdb")
    rc, out, _ = _cli(capsys, *base)
    assert rc == 0 and "already packed (5 records)" in out
    assert os.path.getmtime(tmp_path / "s" / "data.mdb") == mtime
    rc, _, err = _cli(capsys, *base, "--max-side", "32")
    assert rc == 2 and "different arguments (max_side: was None, now 32)" in err
    assert "--overwrite" in err and len(err.splitlines()) == 1
    rc, out, _ = _cli(capsys, *base, "--max-side", "32", "--overwrite")
    assert rc == 0 and "packed 5 records" in out
    r = LmdbReader(tmp_path / "s")
    assert r.meta["packer_args"]["max_side"] == 32 and r[0]["width"] == 32


def test_help_texts(capsys):
    with pytest.raises(SystemExit):
        main(["pack", "--help"])
    out = capsys.readouterr().out
    for word in ("--ann", "--images", "--out", "--max-side", "--skip-bad", "--commit-every",
                 "image-text", "regions", "video-qa", "resumes"):
        assert word in out
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    out = capsys.readouterr().out
    assert "--verify" in out and "exit status is 1" in out


def test_inspect_and_verify(tmp_path, capsys, images):
    root, names = images
    rows = [{"caption": {"en": "a red box", "de": "eine rote Kiste"}, "image_rpath": names[0],
             "elems": [{"caption": "box", "bb": [2, 3, 20, 10]}]}]
    ann = write_jsonl(tmp_path / "ann.jsonl", rows * 3)
    assert _cli(capsys, "pack", "regions", "--ann", ann, "--images", str(root), "--out",
                str(tmp_path / "s"), "--no-progress")[0] == 0
    rc, out, _ = _cli(capsys, "inspect", str(tmp_path / "s"), "--samples", "1")
    assert rc == 0
    for text in ("schema version: 1", "format:         regions", "records:        3",
                 "de: 3, en: 6", "max_side=None", "JPEG 64x48", "[2.0, 3.0, 20.0, 10.0]",
                 "eine rote Kiste"):
        assert text in out, text
    rc, out, _ = _cli(capsys, "inspect", "--verify", str(tmp_path / "s"))
    assert rc == 0 and "all 3 records decode" in out
    rc, out, _ = _cli(capsys, "inspect", "--json", str(tmp_path / "s"))
    assert json.loads(out)["count"] == 3

    # a damaged store: bad image bytes, a box outside the image, an empty text
    with LmdbWriter(tmp_path / "bad") as w:
        w.append({"image": jpeg_bytes(), "width": 64, "height": 48, "texts": {"en": ["ok"]}})
        w.append({"image": jpeg_bytes()[:200], "width": 64, "height": 48})
        w.append({"image": jpeg_bytes(), "width": 64, "height": 48,
                  "regions": [{"bbox": [50, 0, 30, 10], "texts": {"en": [""]}}]})
        w.finish({"format": "test"})
    rc, out, _ = _cli(capsys, "inspect", "--verify", str(tmp_path / "bad"))
    assert rc == 1 and "3 problem(s)" in out
    assert "record 1: image: image does not decode" in out
    assert "regions[0].bbox [50, 0, 30, 10] outside the 64x48 image" in out
    assert "regions[0].texts.en: empty" in out
    rc, _, err = _cli(capsys, "inspect", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in err


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, images):
    root, names = images
    ann = write_jsonl(tmp_path / "ann.jsonl", _good_rows(names, 3))
    rc, _, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images", str(root), "--out",
                      str(tmp_path / "s"))
    assert rc == 0 and "pack image-text" not in err  # stderr is not a tty under pytest
    pack("image-text", [ann], str(root), str(tmp_path / "s2"), progress=True)
    assert "pack image-text" in capsys.readouterr().err


# --- kill -9 --------------------------------------------------------------------------------

def _progress(path) -> int:
    """Records committed by a running pack (0 when none yet); read like an outsider."""
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return 0
    try:
        env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    except lmdb.Error:
        return 0
    try:
        with env.begin() as txn:
            raw = txn.get(PROGRESS_KEY)
        return decode(raw)["count"] if raw is not None else 0
    finally:
        env.close()


def test_kill_9_during_pack_then_rerun_gives_complete_store(tmp_path):
    root = tmp_path / "img"
    names = image_folder(root, 8, size=(96, 64))
    n = 5000
    ann = write_jsonl(tmp_path / "ann.jsonl", [
        {"caption": {"en": f"caption {i}", "de": f"Bild {i}"}, "image_rpath": names[i % 8]}
        for i in range(n)])
    out = str(tmp_path / "store")
    cmd = [sys.executable, "-m", "x2core", "pack", "image-text", "--ann", ann, "--images",
           str(root), "--out", out, "--commit-every", "7", "--max-side", "48", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        done = _progress(out)
        if done >= 50:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    assert killed_at is not None, "the pack finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(UnfinishedStoreError):
        LmdbReader(out)
    assert _progress(out) < n

    done = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == n and 50 <= report["resumed_from"] < n

    r = LmdbReader(out)
    assert len(r) == n and r.meta["count"] == n and r.meta["raw_entries"] == n
    assert r.meta["text_counts"] == {"de": n, "en": n}
    assert r.meta["skipped"]["count"] == 0
    assert len(r.keys) == n
    for i in range(n):  # every record once, in order
        rec = r[i]
        assert rec["texts"] == {"en": [f"caption {i}"], "de": [f"Bild {i}"]}
        assert rec["source"]["index"] == i + 1 and rec["width"] == 48
    r.close()
    env_ = lmdb.open(out, readonly=True, lock=False)
    assert env_.stat()["entries"] == n + 2  # records + __keys__ + __meta__, no __progress__
    env_.close()
