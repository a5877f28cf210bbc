"""Reliability of the data side (issue #15): what a hostile user's files do to `x2vlm pack`
and `x2vlm inspect --verify`, run as a user runs them (the CLI, files one command writes
fed to the next, a real kill -9, a second process re-packing a store)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest

from x2core.cli.app import main
from x2core.data.languages import normalize_lang
from x2core.data.packing import REPORT_FILE
from x2core.data.store import LmdbReader, LmdbWriter, StoreError
from x2core.data.transforms import decode_image
from x2core.errors import InputError

from _data_files import image_folder, jpeg_bytes, mp4_bytes, write_json, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- 1. videos are decoded at pack time and by --verify --------------------------------------

@pytest.fixture
def videos(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("decord")
    root = tmp_path / "vid"
    root.mkdir()
    good = mp4_bytes(6)
    (root / "good.mp4").write_bytes(good)
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])   # keeps the 'ftyp' box
    (root / "empty.mp4").write_bytes(mp4_bytes(0))                 # a video stream, no frame
    return root, good


def test_undecodable_videos_are_bad_records_at_pack_time(tmp_path, capsys, videos):
    root, _ = videos
    ann = write_jsonl(tmp_path / "msrvtt.jsonl", [
        {"video": "good.mp4", "caption": "fine"},
        {"video": "truncated.mp4", "caption": "cut in half"},
        {"video": "empty.mp4", "caption": "no frames"},
    ])
    rc, _, err = _cli(capsys, "pack", "video-text", "--ann", ann, "--images", root,
                      "--out", tmp_path / "s", "--no-progress")
    line = _one_line_error(err)
    assert rc == 2
    assert line.startswith(f"x2vlm pack: error: {os.path.abspath(ann)}:2: video: cannot decode "
                           f"the video"), line
    assert "truncated.mp4" in line and "--skip-bad" in line

    rc, out, err = _cli(capsys, "pack", "video-text", "--ann", ann, "--images", root,
                        "--out", tmp_path / "s", "--no-progress", "--skip-bad")
    assert rc == 0, err
    report = json.loads((tmp_path / "s" / REPORT_FILE).read_text())
    assert report["count"] == 1 and report["skipped"]["count"] == 2
    assert [(s["line"], s["field"]) for s in report["skipped"]["records"]] == [(2, "video"),
                                                                               (3, "video")]
    assert "empty.mp4" in report["skipped"]["records"][1]["message"]
    rc, out, _ = _cli(capsys, "inspect", "--verify", tmp_path / "s")
    assert rc == 0 and "all 1 records decode" in out


def test_verify_decodes_videos_and_frames(tmp_path, capsys, videos):
    root, good = videos
    text = b"this is not a frame\n"
    with LmdbWriter(tmp_path / "s") as w:
        w.append({"video": good, "texts": {"en": ["ok"]}})
        w.append({"video": (root / "truncated.mp4").read_bytes(), "texts": {"en": ["cut"]}})
        w.append({"video": (root / "empty.mp4").read_bytes(), "texts": {"en": ["empty"]}})
        w.append({"frames": [jpeg_bytes(), text], "texts": {"en": ["bad frame"]}})
        w.append({"frames": [], "texts": {"en": ["no frames"]}})
        w.finish({"format": "test"})
    rc, out, _ = _cli(capsys, "inspect", "--verify", tmp_path / "s")
    assert rc == 1 and "4 problem(s) in 5 records" in out, out
    assert "record 1: video: cannot decode the video" in out
    assert "record 2: video: cannot decode the video" in out
    assert "record 3: frames[1]: cannot decode image (20 bytes that look like text: " \
           "'this is not a frame')" in out
    assert "record 4: frames: the video has zero frames" in out
    assert "BytesIO" not in out


# --- 2. --skip-bad does not hide a file in another layout ------------------------------------

def _karpathy_raw(n):
    return {"images": [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg",
                        "imgid": i, "split": "test", "cocoid": i,
                        "sentences": [{"raw": f"caption {i}", "tokens": ["caption"]}]}
                       for i in range(n)], "dataset": "coco"}


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty"])
def test_skip_bad_refuses_a_store_where_every_record_is_bad(tmp_path, capsys, indent):
    image_folder(tmp_path / "img", 2)
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps(_karpathy_raw(3), indent=indent))
    rc, out, err = _cli(capsys, "pack", "retrieval", "--ann", karpathy, "--images",
                        tmp_path / "img", "--out", tmp_path / "s", "--skip-bad", "--no-progress")
    line = _one_line_error(err)
    assert rc == 2
    assert f"is {os.path.abspath(karpathy)} in the 'retrieval' layout" in line
    # the Karpathy layout is now detected and read; its images are not there, so every
    # entry is bad, and the first reasons name the entry and the field
    assert "first reasons:" in line and f"{os.path.abspath(karpathy)}[0]: filename: image file not found" in line
    assert not out
    with pytest.raises(StoreError):                 # no store, not an empty one
        LmdbReader(tmp_path / "s")


def test_skip_bad_refuses_the_official_vqa_questions_file(tmp_path, capsys):
    image_folder(tmp_path / "img", 2)
    questions = write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
        "questions": [{"image_id": i, "question": "what?", "question_id": i} for i in range(5)]})
    rc, _, err = _cli(capsys, "pack", "vqa", "--ann", questions, "--images", tmp_path / "img",
                      "--out", tmp_path / "s", "--skip-bad", "--no-progress")
    assert rc == 2 and "every entry was bad" in _one_line_error(err)
    assert "in the 'vqa' layout" in err


def test_skip_bad_stops_past_max_bad_fraction_and_resumes_with_a_higher_one(tmp_path, capsys):
    names = image_folder(tmp_path / "img", 2)
    good = [{"caption": f"c{i}", "image_rpath": names[i % 2]} for i in range(20)]
    bad = [{"caption": f"b{i}", "image_rpath": "missing.jpg"} for i in range(40)]
    ann = write_jsonl(tmp_path / "ann.jsonl", good + bad)
    args = ["pack", "image-text", "--ann", ann, "--images", tmp_path / "img",
            "--out", tmp_path / "s", "--skip-bad", "--no-progress"]
    rc, _, err = _cli(capsys, *args)
    line = _one_line_error(err)
    assert rc == 2
    assert "30 of the first 50 entries were bad, more than --max-bad-fraction 0.1" in line
    assert "image file not found" in line
    rc, out, err = _cli(capsys, *args, "--max-bad-fraction", "0.7")     # resumes at entry 50
    assert rc == 0, err
    r = LmdbReader(tmp_path / "s")
    assert len(r) == 20 and r.meta["skipped"]["count"] == 40 and r.meta["raw_entries"] == 60

    # a few bad records in many (5 %) are what --skip-bad is for
    ann2 = write_jsonl(tmp_path / "ann2.jsonl", good * 5 + bad[:5])
    rc, out, err = _cli(capsys, "pack", "image-text", "--ann", ann2, "--images",
                        tmp_path / "img", "--out", tmp_path / "s2", "--skip-bad", "--no-progress")
    assert rc == 0 and "packed 100 records" in out and "skipped 5 bad records" in err


def test_verify_fails_on_an_empty_store(tmp_path, capsys):
    with LmdbWriter(tmp_path / "s") as w:
        w.finish({"format": "test"})
    rc, out, _ = _cli(capsys, "inspect", "--verify", tmp_path / "s")
    assert rc == 1 and "the store holds no records" in out and "all 0 records" not in out


# --- 3. a refs pickle is data, never code --------------------------------------------------

class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("how", ["os.system", "builtins.open"])
def test_crafted_refs_pickle_is_refused_and_its_payload_never_runs(tmp_path, capsys, how):
    names = image_folder(tmp_path / "img", 1, size=(100, 80))
    marker = tmp_path / "pwned"
    payload = (_Payload(os.system, (f"touch {marker}",)) if how == "os.system"
               else _Payload(open, (str(marker), "w")))
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps([{"ref_id": 1, "ann_id": 2, "x": payload}], protocol=2))
    inst = write_json(tmp_path / "instances.json", {"annotations": [{"id": 2, "bbox": [1, 1, 5, 5]}]})
    ann = write_json(tmp_path / "refcoco.json", [{"image": names[0], "text": "x", "ref_id": 1}])
    rc, _, err = _cli(capsys, "pack", "refcoco", "--ann", ann, "--images", tmp_path / "img",
                      "--refs", refs, "--instances", inst, "--out", tmp_path / "s", "--no-progress")
    line = _one_line_error(err)
    assert rc == 2 and not marker.exists()
    glob = "posix.system" if how == "os.system" else "io.open"
    assert f"{refs}: refused to load the pickle: it names the global '{glob}'" in line, line


def test_malformed_refs_structure_is_one_line_naming_file_and_entry(tmp_path, capsys):
    names = image_folder(tmp_path / "img", 1, size=(100, 80))
    inst = write_json(tmp_path / "instances.json", {"annotations": [{"id": 2, "bbox": [1, 1, 5, 5]}]})
    ann = write_json(tmp_path / "refcoco.json", [{"image": names[0], "text": "x", "ref_id": 1}])
    refs = tmp_path / "refs.p"
    refs.write_bytes(pickle.dumps([{"ref_id": 1, "ann_id": 2}, 7], protocol=2))
    rc, _, err = _cli(capsys, "pack", "refcoco", "--ann", ann, "--images", tmp_path / "img",
                      "--refs", refs, "--instances", inst, "--out", tmp_path / "s", "--no-progress")
    assert rc == 2
    assert (f"refs file {refs}: entry [1]: expected a dict with 'ref_id' and 'ann_id', got int 7"
            in _one_line_error(err))


# --- 4. pack bookkeeping -------------------------------------------------------------------

def test_rerun_after_a_kill_before_the_report_rewrites_it(tmp_path, capsys):
    names = image_folder(tmp_path / "img", 2)
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"caption": f"c{i}", "image_rpath": names[i % 2]}
                                               for i in range(5)])
    args = ["pack", "image-text", "--ann", ann, "--images", str(tmp_path / "img"),
            "--out", str(tmp_path / "s"), "--no-progress"]
    # kill -9 exactly between the final commit and the report
    code = ("import os, signal, sys, x2core.data.packing as p\n"
            "p._write_report = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from x2core.cli.app import main\n"
            f"sys.exit(main({args!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert len(LmdbReader(tmp_path / "s")) == 5 and not (tmp_path / "s" / REPORT_FILE).exists()
    rc, out, _ = _cli(capsys, *args)
    assert rc == 0 and "already packed (5 records)" in out
    report = json.loads((tmp_path / "s" / REPORT_FILE).read_text())
    assert report["count"] == 5 and report["format"] == "image-text"


def test_reader_reopened_after_another_process_repacked_the_store(tmp_path):
    names = image_folder(tmp_path / "img", 2)
    first = write_jsonl(tmp_path / "a.jsonl", [{"caption": "old", "image_rpath": names[0]}] * 2)
    second = write_jsonl(tmp_path / "b.jsonl", [{"caption": "new", "image_rpath": names[1]}] * 3)
    out = str(tmp_path / "s")
    assert main(["pack", "image-text", "--ann", first, "--images", str(tmp_path / "img"),
                 "--out", out, "--no-progress"]) == 0
    old = LmdbReader(out)
    assert len(old) == 2 and old[0]["texts"] == {"en": ["old"]}
    proc = subprocess.run([sys.executable, "-m", "x2core", "pack", "image-text", "--ann", second,
                           "--images", str(tmp_path / "img"), "--out", out, "--overwrite",
                           "--no-progress"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = LmdbReader(out)
    assert len(again) == 3 and again.meta["count"] == 3
    assert [r["texts"] for r in again] == [{"en": ["new"]}] * 3
    assert len(old) == 3 and old[2]["texts"] == {"en": ["new"]}   # shares the reopened handle


# --- 5. messages and language keys --------------------------------------------------------

def test_text_file_named_jpg_says_what_the_bytes_are(tmp_path, capsys):
    names = image_folder(tmp_path / "img", 1)
    (tmp_path / "img" / "notes.jpg").write_text("<html>404 not found</html>\n")
    (tmp_path / "img" / "readme.jpg").write_text("just some text\n")
    ann = write_jsonl(tmp_path / "ann.jsonl", [{"caption": "a", "image_rpath": names[0]},
                                               {"caption": "b", "image_rpath": "readme.jpg"}])
    rc, _, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images", tmp_path / "img",
                      "--out", tmp_path / "s", "--no-progress")
    line = _one_line_error(err)
    assert rc == 2 and "BytesIO" not in line
    assert f"{os.path.abspath(ann)}:2: image_rpath: corrupt or unreadable image (15 bytes " \
           f"that look like text: 'just some text')" in line
    assert "readme.jpg" in line
    with pytest.raises(InputError) as info:
        decode_image((tmp_path / "img" / "notes.jpg").read_bytes())
    assert "BytesIO" not in str(info.value) and "markup (HTML/XML/SVG)" in str(info.value)


def test_language_keys_are_iso_639_codes_with_a_hint(tmp_path, capsys):
    for key, norm in [("en", "en"), ("de", "de"), ("zh", "zh"), ("cs", "cs"), ("fr", "fr"),
                      ("ja", "ja"), ("zh_CN", "zh-cn"), ("pt-BR", "pt-br"),
                      ("zh-Hans", "zh-hans"), ("es-419", "es-419"), ("yue", "yue"),
                      ("fil", "fil")]:
        assert normalize_lang(key) == norm, key
    for key in ("xyz", "ge", "english", "en-", "e", 3):
        assert normalize_lang(key) is None, key

    names = image_folder(tmp_path / "img", 1)
    for key, hint in (("xyz", ""), ("eng", "did you mean"), ("xx-yy", "")):
        ann = write_jsonl(tmp_path / f"{key}.jsonl",
                          [{"caption": {"en": "a dog", key: "text"}, "image_rpath": names[0]}])
        rc, _, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images",
                          tmp_path / "img", "--out", tmp_path / f"s-{key}", "--no-progress")
        line = _one_line_error(err)
        assert rc == 2 and f":1: caption.{key}: unknown language key '{key}'" in line, line
        assert hint in line
    ann = write_jsonl(tmp_path / "ok.jsonl",
                      [{"caption": {"en": "a dog", "pt-BR": "um cão", "zh-Hans": "狗"},
                        "image_rpath": names[0]}])
    rc, out, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images", tmp_path / "img",
                        "--out", tmp_path / "s-ok", "--no-progress")
    assert rc == 0, err
    assert LmdbReader(tmp_path / "s-ok").meta["text_counts"] == {"en": 1, "pt-br": 1, "zh-hans": 1}
    rc, _, err = _cli(capsys, "pack", "image-text", "--ann", ann, "--images", tmp_path / "img",
                      "--out", tmp_path / "s-x", "--lang", "eng", "--no-progress")
    assert rc == 2 and "--lang 'eng' is not an ISO 639" in err and "did you mean" in err
    rc, _, err = _cli(capsys, "pack", "multilingual", "--ann", f"xyz={ann}", "--images",
                      tmp_path / "img", "--out", tmp_path / "s-m", "--no-progress")
    assert rc == 2 and f"'xyz' in 'xyz={ann}' is not an ISO 639 language code" in err
