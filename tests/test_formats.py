"""Every built-in dataset format, on small files in its real layout."""
from __future__ import annotations

import os
import pickle

import pytest

from x2core.data.packing import RecordError, pack
from x2core.plugin_manager import PluginManager
from x2core.data.store import LmdbReader

from _data_files import (b64_jpeg, image_folder, mp4_bytes, write_json, write_jpeg,
                         write_jsonl)

FORMATS = ["image-text", "regions", "retrieval", "vqa", "nlvr2", "refcoco", "captioning",
           "multilingual", "video-text", "video-qa"]


def _pack(tmp_path, fmt, ann, **kw):
    n = len(list(tmp_path.glob("store-*")))
    out = tmp_path / f"store-{fmt}-{n}"
    kw.setdefault("images_root", str(tmp_path / "img"))
    report = pack(fmt, ann if isinstance(ann, list) else [ann], kw.pop("images_root"), str(out),
                  progress=False, **kw)
    reader = LmdbReader(out)
    return report, reader, [reader[i] for i in range(len(reader))]


def test_every_format_is_registered_through_the_hook():
    pm = PluginManager(autoload=False, extra_modules=[])
    reg = pm.registry("datasets")
    assert set(FORMATS) <= set(reg.names())
    for name in FORMATS:
        assert reg.get(name).plugin == "x2datasets.builtin" and reg.get(name).description


def test_image_text_caption_shapes_and_image_sources(tmp_path):
    names = image_folder(tmp_path / "img")
    abs_path = write_jpeg(tmp_path / "elsewhere" / "x.jpg", (30, 20))
    ann = write_jsonl(tmp_path / "pt.jsonl", [
        {"caption": "a red square", "image_rpath": names[0]},
        {"caption": ["one", "two"], "binary": b64_jpeg((40, 30))},
        {"caption": {"en": "cat", "de": ["Katze", "Kater"], "zh_CN": "猫"}, "image_rpath": abs_path},
        "",
        {"desc": "from desc", "image_rpath": names[1], "image_id": 7},
    ])
    report, r, recs = _pack(tmp_path, "image-text", ann)
    assert report["count"] == 4
    assert recs[0]["texts"] == {"en": ["a red square"]}
    assert (recs[0]["width"], recs[0]["height"]) == (64, 48)
    assert recs[1]["texts"] == {"en": ["one", "two"]} and recs[1]["width"] == 40
    assert recs[2]["texts"] == {"en": ["cat"], "de": ["Katze", "Kater"], "zh-cn": ["猫"]}
    assert recs[2]["width"] == 30
    assert recs[3]["texts"] == {"en": ["from desc"]} and recs[3]["image_id"] == 7
    assert recs[3]["source"] == {"file": os.path.abspath(ann), "index": 5}  # line numbers
    assert r.meta["text_counts"] == {"de": 2, "en": 5, "zh-cn": 1}

    # --caption-key and --lang
    ann2 = write_jsonl(tmp_path / "desc.jsonl", [{"desc": "Hund", "caption": "x", "image_rpath": names[2]}])
    _, _, recs = _pack(tmp_path, "image-text", ann2, caption_key="desc", lang="de")
    assert recs[0]["texts"] == {"de": ["Hund"]}


def test_regions_boxes_scaled_clipped_and_checked(tmp_path):
    write_jpeg(tmp_path / "img" / "big.jpg", (200, 100))
    rows = [{"elems": [{"caption": "left thing", "bb": [0, 0, 100, 50], "attributes": "red"},
                       {"caption": {"en": "edge", "de": "Rand"}, "bb": [150.5, 50, 50.4, 50.6],
                        "attributes": ["small", "blue"]}],
             "caption": "whole image", "image_rpath": "big.jpg", "image_id": 3}]
    ann = write_jsonl(tmp_path / "rg.jsonl", rows)
    _, r, recs = _pack(tmp_path, "regions", ann, max_side=100)
    rec = recs[0]
    assert (rec["width"], rec["height"]) == (100, 50)
    assert rec["texts"] == {"en": ["whole image"]} and rec["image_id"] == 3
    a, b = rec["regions"]
    assert a == {"bbox": [0.0, 0.0, 50.0, 25.0], "texts": {"en": ["left thing"]}, "attributes": ["red"]}
    # clipped to the 200x100 original (within the 1 px tolerance), then halved
    assert b["bbox"] == [75.25, 25.0, 24.75, 25.0]
    assert b["texts"] == {"en": ["edge"], "de": ["Rand"]} and b["attributes"] == ["small", "blue"]
    assert r.meta["text_counts"] == {"de": 1, "en": 3}
    assert r.meta["packer_args"]["max_side"] == 100

    rows[0]["elems"].append({"caption": "c", "bb": [0, 0, 10, 10]})
    rows[0]["elems"].append({"caption": "d", "bb": [190, 0, 20, 10]})  # 10 px outside
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RecordError) as err:
        _pack(tmp_path, "regions", bad)
    assert err.value.field == "elems[3].bb" and err.value.index == 1
    assert "outside the 200x100 image" in str(err.value)


def test_retrieval_train_grouped_and_test_layout(tmp_path):
    names = image_folder(tmp_path / "img", 3)
    train = write_json(tmp_path / "train.json", [
        {"image": names[0], "caption": "a", "image_id": "coco_1"},
        {"image": names[1], "caption": "b", "image_id": "coco_2"},
        {"image": names[0], "caption": "a2", "image_id": "coco_1"},
    ])
    report, _, recs = _pack(tmp_path, "retrieval", train)
    assert report["count"] == 2 and report["raw_entries"] == 2
    assert [r["image_id"] for r in recs] == ["coco_1", "coco_2"]
    assert recs[0]["texts"] == {"en": ["a", "a2"]} and recs[0]["source"]["index"] == 0
    test = write_json(tmp_path / "test.json", [{"image": n, "caption": [f"{n} x", f"{n} y"]}
                                               for n in names])
    _, _, recs = _pack(tmp_path, "retrieval", test)
    assert [r["image_id"] for r in recs] == [0, 1, 2]
    assert recs[2]["texts"] == {"en": ["img2.jpg x", "img2.jpg y"]}


def test_vqa_answers_weights_test_entries_and_answer_list(tmp_path):
    names = image_folder(tmp_path / "img", 2)
    ann = write_json(tmp_path / "vqa.json", [
        {"question_id": 10, "question": "what color?", "answer": ["red", "red", "blue", "red"],
         "image": names[0], "dataset": "vqa"},
        {"question_id": 11, "question": "where?", "answer": "table", "image": names[1], "dataset": "vg"},
        {"question_id": 12, "question": "how many?", "image": names[1]},
    ])
    answers = write_json(tmp_path / "answer_list.json", ["red", "blue", "table"])
    _, r, recs = _pack(tmp_path, "vqa", ann, answer_list=answers)
    assert recs[0]["answers"] == ["red", "blue"] and recs[0]["answer_weights"] == [0.75, 0.25]
    assert recs[0]["question"] == "what color?" and recs[0]["question_id"] == 10
    assert recs[1]["answers"] == ["table"] and recs[1]["answer_weights"] == [0.5]
    assert "answers" not in recs[2] and recs[2]["question_id"] == 12
    assert r.meta["answer_list"] == ["red", "blue", "table"]


def test_nlvr2_pairs_and_labels(tmp_path):
    names = image_folder(tmp_path / "img", 3)
    ann = write_json(tmp_path / "nlvr.json", [
        {"images": [names[0], names[1]], "sentence": "left has more", "label": "True"},
        {"images": [names[1], names[2]], "sentence": "both red", "label": False},
    ])
    _, _, recs = _pack(tmp_path, "nlvr2", ann)
    assert [r["label"] for r in recs] == [1, 0]
    assert len(recs[0]["images"]) == 2 and recs[0]["image_sizes"] == [[64, 48], [64, 48]]
    assert recs[1]["texts"] == {"en": ["both red"]}
    bad = write_json(tmp_path / "bad.json", [{"images": [names[0], names[1]], "sentence": "s",
                                             "label": "maybe"}])
    with pytest.raises(RecordError, match=r"bad.json\[0\]: label"):
        _pack(tmp_path, "nlvr2", bad)


def test_refcoco_boxes_from_refer_files_or_entries(tmp_path):
    names = image_folder(tmp_path / "img", 2, size=(100, 80))
    refs = tmp_path / "refs(unc).p"
    with open(refs, "wb") as fh:
        pickle.dump([{"ref_id": 5, "ann_id": 900, "image_id": 1, "split": "train",
                      "sentences": [{"sent": "man on left"}]}], fh, protocol=2)
    inst = write_json(tmp_path / "instances.json",
                      {"images": [], "annotations": [{"id": 900, "bbox": [10, 20, 30, 40],
                                                      "image_id": 1}]})
    ann = write_json(tmp_path / "refcoco+_train.json", [
        {"image": names[0], "text": "man on left", "ref_id": 5},
        {"image": names[1], "text": "dog", "ref_id": 6, "bbox": [0, 0, 50, 40]},
    ])
    _, _, recs = _pack(tmp_path, "refcoco", ann, refs=str(refs), instances=inst)
    assert recs[0]["ref_id"] == 5
    assert recs[0]["regions"] == [{"bbox": [10.0, 20.0, 30.0, 40.0], "texts": {"en": ["man on left"]}}]
    assert recs[1]["regions"][0]["bbox"] == [0.0, 0.0, 50.0, 40.0]
    # without REFER files, entries with a bbox still work
    ann2 = write_json(tmp_path / "direct.json", [
        {"image": names[1], "text": "dog", "ref_id": 6, "bbox": [0, 0, 50, 40]}])
    _, _, recs = _pack(tmp_path, "refcoco", ann2)
    assert recs[0]["regions"][0]["texts"] == {"en": ["dog"]}
    missing = write_json(tmp_path / "missing.json", [{"image": names[0], "text": "x", "ref_id": 77}])
    with pytest.raises(RecordError, match="ref_id: ref_id 77 is not in the refs file"):
        _pack(tmp_path, "refcoco", missing, refs=str(refs), instances=inst)


def test_captioning_train_and_eval_ids(tmp_path):
    write_jpeg(tmp_path / "img" / "val2014" / "COCO_val2014_000000391895.jpg")
    write_jpeg(tmp_path / "img" / "train" / "a.jpg")
    train = write_json(tmp_path / "train.json", [
        {"image": "train/a.jpg", "caption": "a man riding", "image_id": 42}])
    _, _, recs = _pack(tmp_path, "captioning", train)
    assert recs[0]["image_id"] == 42 and recs[0]["texts"] == {"en": ["a man riding"]}
    test = write_json(tmp_path / "test.json", [{"image": "val2014/COCO_val2014_000000391895.jpg"}])
    _, _, recs = _pack(tmp_path, "captioning", test)
    assert recs[0]["image_id"] == 391895 and "texts" not in recs[0]


def test_multilingual_files_per_language_merge(tmp_path):
    names = image_folder(tmp_path / "img", 2)
    en = write_jsonl(tmp_path / "test_en.jsonl", [
        {"id": "100", "img_path": names[0], "sentences": ["a dog"]},
        {"id": "101", "img_path": names[1], "sentences": ["a cat", "a kitten"]}])
    de = write_jsonl(tmp_path / "test_de.jsonl", [
        {"id": "101", "img_path": names[1], "sentences": ["eine Katze"]},
        {"id": "100", "img_path": names[0], "sentences": ["ein Hund"]}])
    report, r, recs = _pack(tmp_path, "multilingual", [en, f"de={de}"])
    assert report["count"] == 2
    assert recs[0]["texts"] == {"en": ["a dog"], "de": ["ein Hund"]} and recs[0]["image_id"] == "100"
    assert recs[1]["texts"] == {"en": ["a cat", "a kitten"], "de": ["eine Katze"]}
    assert r.meta["text_counts"] == {"de": 2, "en": 3}
    assert r.meta["packer_args"]["file_langs"] == {os.path.abspath(de): "de"}
    # JSON list variant with {lang: [...]} captions
    lst = write_json(tmp_path / "m.json", [{"image": names[0], "caption": {"en": ["x"], "zh": ["狗"]}}])
    _, _, recs = _pack(tmp_path, "multilingual", lst)
    assert recs[0]["texts"] == {"en": ["x"], "zh": ["狗"]}
    with pytest.raises(Exception, match="does not take LANG=PATH"):
        _pack(tmp_path, "image-text", [f"de={de}"])


def test_video_text_and_video_qa(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("decord")           # pack decodes each video's first and last frame
    vids = tmp_path / "img"
    vids.mkdir()
    mp4s = [mp4_bytes(2 + i) for i in (0, 1)]
    for i in (0, 1):
        (vids / f"video{i}.mp4").write_bytes(mp4s[i])
    ann = write_json(tmp_path / "msrvtt_train.json", [
        {"video_id": "video0", "caption": "a man cooks"},
        {"video_id": "video1", "caption": ["a car", "a red car"]},
        {"video_id": "video0", "caption": "someone cooking"},
    ])
    _, _, recs = _pack(tmp_path, "video-text", ann)
    assert [r["video_id"] for r in recs] == ["video0", "video1"]
    assert recs[0]["texts"] == {"en": ["a man cooks", "someone cooking"]}
    assert recs[0]["video"] == mp4s[0]           # stored as on disk

    qa = write_jsonl(tmp_path / "msrvtt_qa_train.jsonl", [
        {"video_id": "video1", "question": "what is red?", "answer": "car"},
        {"video_id": 0, "question": "who cooks?", "answer": "man"},   # numeric MSRVTT id
        {"video_id": "video0", "question": "what?", "answer": "rare"},
    ])
    a2l = write_json(tmp_path / "train_ans2label.json", {"car": 0, "man": 1})
    _, r, recs = _pack(tmp_path, "video-qa", qa, answer_list=a2l)
    assert [x.get("label") for x in recs] == [0, 1, None]
    assert recs[1]["video"] == mp4s[0] and recs[2]["answers"] == ["rare"]
    assert r.meta["ans2label"] == {"car": 0, "man": 1} and r.meta["answer_list"] == ["car", "man"]

    (vids / "broken.mp4").write_bytes(b"not a video at all")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"video_id": "broken", "caption": "x"}])
    with pytest.raises(RecordError, match=r"bad.jsonl:1: video_id: not an MP4"):
        _pack(tmp_path, "video-text", bad)


def test_format_options_are_checked(tmp_path):
    names = image_folder(tmp_path / "img", 1)
    ann = write_json(tmp_path / "v.json", [{"question": "q", "image": names[0]}])
    with pytest.raises(Exception, match="format 'vqa' does not take --caption-key"):
        _pack(tmp_path, "vqa", ann, caption_key="desc")
    with pytest.raises(Exception, match="unknown dataset format 'nope'"):
        _pack(tmp_path, "nope", ann)
