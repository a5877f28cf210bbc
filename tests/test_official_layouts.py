"""`x2vlm pack` reads the files the datasets' owners publish: Karpathy's splits, COCO
captions, VQA v2 questions + annotations, Visual Genome QA, NLVR2's jsonl, MSRVTT's
videodatainfo and 1k-A list, MSRVTT-QA / MSVD-QA. Each file here is written from the
public definition; the layout is told from the content, ``--layout`` overrides, and a bad
record is one line naming file, record and field."""
from __future__ import annotations

import json
import os

import pytest

from x2core.cli.app import main
from x2core.data.packing import RecordError, pack
from x2core.data.store import LmdbReader
from x2core.errors import ConfigError, InputError

from _data_files import b64_jpeg, write_jpeg, write_json, write_jsonl


def _records(out):
    r = LmdbReader(str(out))
    recs = [r[i] for i in range(len(r))]
    meta = r.meta
    r.close()
    return recs, meta


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- Karpathy ---------------------------------------------------------------------------------

def _karpathy(tmp_path, dataset="coco"):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test"]):
        if dataset == "coco":
            fp, fn = "val2014", f"COCO_val2014_{i:012d}.jpg"
            write_jpeg(tmp_path / "coco" / fp / fn, color=(50 * i, 20, 20))
            entry = {"filepath": fp, "filename": fn, "cocoid": 100 + i}
        else:
            fn = f"{1000 + i}.jpg"
            write_jpeg(tmp_path / "coco" / "flickr30k-images" / fn, color=(50 * i, 20, 20))
            entry = {"filename": fn, "imgid": i}
        entry.update(split=split, sentences=[{"raw": f"A photo {i} a.", "tokens": ["a"]},
                                             {"raw": f"Photo {i} b.", "tokens": ["b"]}])
        images.append(entry)
    return write_json(tmp_path / f"dataset_{dataset}.json", {"images": images, "dataset": dataset})


def test_karpathy_splits_texts_ids(tmp_path, capsys):
    ann = _karpathy(tmp_path)
    rc, out, err = _cli(capsys, "pack", "retrieval", "--ann", ann, "--split", "train+restval",
                        "--images", tmp_path / "coco", "--out", tmp_path / "train")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "train")
    assert [r["split"] for r in recs] == ["train", "restval"]
    assert [r["image_id"] for r in recs] == [100, 101]
    assert recs[0]["texts"] == {"en": ["A photo 0 a.", "Photo 0 b."]}
    assert meta["packer_args"]["split"] == "train+restval"
    pack("captioning", [ann], str(tmp_path / "coco"), str(tmp_path / "test"), split="test",
         progress=False)
    recs, _ = _records(tmp_path / "test")
    assert [(r["image_id"], r["split"]) for r in recs] == [(103, "test")]


def test_flickr30k_images_under_their_folder(tmp_path):
    ann = _karpathy(tmp_path, "flickr30k")
    pack("retrieval", [ann], str(tmp_path / "coco"), str(tmp_path / "s"), split="val",
         progress=False)
    recs, _ = _records(tmp_path / "s")
    assert [r["image_id"] for r in recs] == [2] and recs[0]["texts"]["en"][1] == "Photo 2 b."


def test_karpathy_bad_record_and_split(tmp_path):
    ann = _karpathy(tmp_path)
    data = json.load(open(ann))
    data["images"][2]["sentences"][1]["raw"] = "  "
    write_json(ann, data)
    with pytest.raises(RecordError) as exc:
        pack("retrieval", [ann], str(tmp_path / "coco"), str(tmp_path / "s"), split="val",
             progress=False)
    assert str(exc.value).startswith(f"{ann}[2]: sentences[1].raw: empty caption")
    with pytest.raises(ConfigError, match=r"--split 'dev'.*train, restval, val, test"):
        pack("retrieval", [ann], str(tmp_path / "coco"), str(tmp_path / "t"), split="dev",
             progress=False)


# --- COCO captions ----------------------------------------------------------------------------

def _coco_captions(tmp_path):
    imgs = []
    for i in range(2):
        name = f"COCO_train2014_{i:012d}.jpg"
        write_jpeg(tmp_path / "coco" / "train2014" / name, color=(10, 90 * i, 10))
        imgs.append({"id": 7 + i, "file_name": name, "height": 48, "width": 64})
    anns = [{"image_id": 7, "id": 1, "caption": "a red thing"},
            {"image_id": 8, "id": 2, "caption": "a green thing"},
            {"image_id": 7, "id": 3, "caption": "something red"}]
    return write_json(tmp_path / "captions_train2014.json",
                      {"info": {}, "images": imgs, "annotations": anns})


@pytest.mark.parametrize("fmt", ["captioning", "image-text"])
def test_coco_captions(tmp_path, fmt):
    ann = _coco_captions(tmp_path)
    pack(fmt, [ann], str(tmp_path / "coco"), str(tmp_path / "s"), progress=False)
    recs, _ = _records(tmp_path / "s")
    assert [(r["image_id"], r["texts"]["en"]) for r in recs] == [
        (7, ["a red thing", "something red"]), (8, ["a green thing"])]


def test_coco_captions_bad_caption(tmp_path):
    ann = _coco_captions(tmp_path)
    data = json.load(open(ann))
    data["annotations"][2]["caption"] = ""
    write_json(ann, data)
    with pytest.raises(RecordError) as exc:
        pack("retrieval", [ann], str(tmp_path / "coco"), str(tmp_path / "s"), progress=False)
    assert str(exc.value).startswith(f"{ann}[0]: annotations(image_id=7)[1].caption: empty caption")


# --- VQA v2 and Visual Genome -----------------------------------------------------------------

def _vqa(tmp_path, subtype="train2014"):
    for image_id in (9, 25):
        write_jpeg(tmp_path / "coco" / subtype.replace("test-dev", "test") /
                   f"COCO_{subtype.replace('test-dev', 'test')}_{image_id:012d}.jpg")
    qs = [{"image_id": 9, "question": "What color?", "question_id": 90},
          {"image_id": 25, "question": "How many?", "question_id": 250},
          {"image_id": 9, "question": "Is it red?", "question_id": 91}]
    q = write_json(tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                   {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
                    "data_subtype": subtype, "questions": qs, "license": {}})

    def ann(qid, image_id, answers, mc):
        return {"question_id": qid, "image_id": image_id, "answer_type": "other",
                "question_type": "what", "multiple_choice_answer": mc,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                            for k, a in enumerate(answers)]}
    a = write_json(tmp_path / f"v2_mscoco_{subtype}_annotations.json", {"annotations": [
        ann(90, 9, ["red"] * 7 + ["dark red"] * 2 + ["pink"], "red"),
        ann(250, 25, ["2"] * 5 + ["3"] * 5, "2"),
        ann(91, 9, ["yes"] * 10, "yes")]})
    return q, a


def test_vqa_v2_weights_and_answer_list(tmp_path, capsys):
    q, a = _vqa(tmp_path)
    rc, out, err = _cli(capsys, "pack", "vqa", "--questions", q, "--annotations", a,
                        "--min-answer-count", "1", "--images", tmp_path / "coco",
                        "--out", tmp_path / "s")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "s")
    assert [r["question_id"] for r in recs] == [90, 250, 91]
    # the reference: each distinct answer's count / number of answers
    assert recs[0]["answers"] == ["red", "dark red", "pink"]
    assert recs[0]["answer_weights"] == [0.7, 0.2, 0.1]
    assert recs[1]["answer_weights"] == [0.5, 0.5]
    assert recs[0]["question"] == "What color?" and recs[0]["dataset"] == "vqa"
    # multiple_choice_answer counts: 2, red, yes once each -> all kept, by name among ties
    assert meta["answer_list"] == ["2", "red", "yes"]
    pack("vqa", [q], str(tmp_path / "coco"), str(tmp_path / "m2"), annotations=[a],
         min_answer_count=2, progress=False)
    assert _records(tmp_path / "m2")[1]["answer_list"] == []


def test_vqa_v2_answers_normalised_merge_in_weights_and_list(tmp_path, capsys):
    """The official normalisation at pack time: "Two", "two." and "2" are one answer, in
    the weights and in the answer list's counts; --no-normalize-answers keeps them apart."""
    q, a = _vqa(tmp_path)
    data = json.load(open(a))
    for ann, answers, mc in [(data["annotations"][0], ["Two"] * 4 + ["two."] * 2 + ["2"] + ["3"] * 3, "Two"),
                             (data["annotations"][1], ["2"] * 10, "2"),
                             (data["annotations"][2], ["Yes"] * 9 + ["the dog"], "yes")]:
        ann["multiple_choice_answer"] = mc
        for entry, text in zip(ann["answers"], answers):
            entry["answer"] = text
    write_json(a, data)
    rc, _, err = _cli(capsys, "pack", "vqa", "--questions", q, "--annotations", a, "--min-answer-count",
                      "2", "--images", tmp_path / "coco", "--out", tmp_path / "n", "--no-progress")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "n")
    assert (recs[0]["answers"], recs[0]["answer_weights"]) == (["2", "3"], [0.7, 0.3])
    assert (recs[2]["answers"], recs[2]["answer_weights"]) == (["yes", "dog"], [0.9, 0.1])
    assert meta["answer_list"] == ["2"]  # "Two" and "2": two questions
    rc, _, err = _cli(capsys, "pack", "vqa", "--questions", q, "--annotations", a, "--min-answer-count",
                      "2", "--no-normalize-answers", "--images", tmp_path / "coco", "--out", tmp_path / "w",
                      "--no-progress")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "w")
    assert recs[0]["answers"] == ["Two", "two.", "2", "3"] and meta["answer_list"] == []
    rc, _, err = _cli(capsys, "pack", "vqa", "--questions", q, "--annotations", a, "--min-answer-count",
                      "2", "--answer-list", write_json(tmp_path / "l.json", ["2"]),
                      "--images", tmp_path / "coco", "--out", tmp_path / "x")
    assert rc != 0 and err.strip().splitlines() == [
        "x2vlm pack: error: --min-answer-count: for building the answer list from the answers, not "
        "with --answer-list (which gives it)"]


def test_vqa_v2_test_questions_alone(tmp_path):
    q, _ = _vqa(tmp_path, "test-dev2015")
    answers = write_json(tmp_path / "answer_list.json", ["red", "2"])
    pack("vqa", [q], str(tmp_path / "coco"), str(tmp_path / "s"), answer_list=answers,
         progress=False)
    recs, meta = _records(tmp_path / "s")
    assert [r["image_id"] for r in recs] == [9, 25, 9] and "answers" not in recs[0]
    assert meta["answer_list"] == ["red", "2"]


def test_vqa_v2_bad_record(tmp_path):
    q, a = _vqa(tmp_path)
    data = json.load(open(a))
    data["annotations"][1]["answers"][3]["answer"] = ""
    write_json(a, data)
    with pytest.raises(RecordError) as exc:
        pack("vqa", [q], str(tmp_path / "coco"), str(tmp_path / "s"), annotations=[a],
             progress=False)
    assert str(exc.value).startswith(f"{q}[1]: answers[3].answer: {a}[1]: expected a non-empty")


def test_visual_genome_qa(tmp_path):
    write_jpeg(tmp_path / "vg" / "VG_100K" / "1.jpg")
    write_jpeg(tmp_path / "vg" / "VG_100K_2" / "2.jpg")
    ann = write_json(tmp_path / "question_answers.json", [
        {"id": 1, "qas": [{"qa_id": 5, "image_id": 1, "question": "What color is it?",
                           "answer": "Red.", "a_objects": [], "q_objects": []},
                          {"qa_id": 6, "image_id": 1, "question": "Where?", "answer": "On a table."}]},
        {"id": 2, "qas": [{"qa_id": 7, "image_id": 2, "question": "Who?", "answer": "A man"}]}])
    answers = write_json(tmp_path / "answer_list.json", ["red", "a man"])
    pack("vqa", [ann], str(tmp_path / "vg"), str(tmp_path / "s"), answer_list=answers,
         progress=False)
    recs, _ = _records(tmp_path / "s")
    assert [(r["question_id"], r["answers"], r["answer_weights"], r["dataset"]) for r in recs] == [
        (5, ["red"], [0.5], "vg"), (7, ["a man"], [0.5], "vg")]
    data = json.load(open(ann))
    del data[1]["qas"][0]["question"]
    write_json(ann, data)
    with pytest.raises(RecordError, match=r"question_answers.json\[1\]: qas\[0\].question: missing"):
        pack("vqa", [ann], str(tmp_path / "vg"), str(tmp_path / "t"), progress=False)


# --- NLVR2 ------------------------------------------------------------------------------------

def _nlvr2(tmp_path):
    root = tmp_path / "nlvr2"
    write_jpeg(root / "train" / "61" / "train-10171-0-img0.png")  # PIL reads by content
    write_jpeg(root / "train" / "61" / "train-10171-0-img1.png", color=(1, 2, 3))
    write_jpeg(root / "dev" / "dev-850-0-img0.png")
    write_jpeg(root / "dev" / "dev-850-0-img1.png")
    train = write_jsonl(tmp_path / "train.json", [
        {"identifier": "train-10171-0-0", "directory": "61", "sentence": "Two dogs.",
         "label": "True", "left_url": "x", "right_url": "y", "synset": "dog", "writer": "1"},
        {"identifier": "train-10171-0-1", "directory": "61", "sentence": "No dog.",
         "label": "False"}])
    dev = write_jsonl(tmp_path / "dev.json", [
        {"identifier": "dev-850-0-0", "sentence": "A cat.", "label": "False"}])
    return root, train, dev


def test_nlvr2_official(tmp_path):
    root, train, dev = _nlvr2(tmp_path)
    pack("nlvr2", [train], str(root), str(tmp_path / "t"), progress=False)
    recs, _ = _records(tmp_path / "t")
    assert [(r["identifier"], r["label"], r["texts"]["en"]) for r in recs] == [
        ("train-10171-0-0", 1, ["Two dogs."]), ("train-10171-0-1", 0, ["No dog."])]
    with open(root / "train" / "61" / "train-10171-0-img1.png", "rb") as fh:
        assert recs[0]["images"][1] == fh.read()
    pack("nlvr2", [dev], str(root), str(tmp_path / "d"), progress=False)
    assert _records(tmp_path / "d")[0][0]["label"] == 0
    write_jsonl(dev, [{"identifier": "dev-851-0-0", "sentence": "A cat.", "label": "False"}])
    with pytest.raises(RecordError) as exc:
        pack("nlvr2", [dev], str(root), str(tmp_path / "e"), progress=False)
    assert str(exc.value).startswith(f"{dev}:1: identifier: image file not found (tried ")


# --- MSRVTT, MSRVTT-QA, MSVD-QA ----------------------------------------------------------------

def _frames(path, n=2, color=(9, 9, 9)):
    write_json(path, [b64_jpeg((32, 32), color) for _ in range(n)])


def test_msrvtt_videodatainfo_and_1ka(tmp_path):
    vids = tmp_path / "videos"
    os.makedirs(vids)
    for i in range(3):
        _frames(vids / f"video_{i}.json")
    info = write_json(tmp_path / "train_val_videodatainfo.json", {
        "info": {}, "videos": [{"category": 9, "url": "u", "video_id": f"video{i}", "start time": 0,
                                "end time": 1, "split": s, "id": i}
                               for i, s in enumerate(["train", "validate", "train"])],
        "sentences": [{"caption": "a man sings", "video_id": "video0", "sen_id": 0},
                      {"caption": "a dog runs", "video_id": "video1", "sen_id": 1},
                      {"caption": "someone sings", "video_id": "video0", "sen_id": 2},
                      {"caption": "cars", "video_id": "video2", "sen_id": 3}]})
    pack("video-text", [info], str(vids), str(tmp_path / "t"), split="train", progress=False)
    recs, _ = _records(tmp_path / "t")
    assert [(r["video_id"], r["texts"]["en"], len(r["frames"])) for r in recs] == [
        ("video0", ["a man sings", "someone sings"], 2), ("video2", ["cars"], 2)]
    data = json.load(open(info))
    data["sentences"] = [x for x in data["sentences"] if x["video_id"] != "video1"]
    write_json(info, data)
    with pytest.raises(RecordError) as exc:
        pack("video-text", [info], str(vids), str(tmp_path / "v"), split="validate", progress=False)
    assert str(exc.value).startswith(f"{info}[1]: video_id: video1 has no caption in 'sentences'")
    csv = tmp_path / "MSRVTT_JSFUSION_test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr7020,video1,a dog runs fast\n"
                   "ret1,msr7021,video2,cars drive\n")
    pack("video-text", [str(csv)], str(vids), str(tmp_path / "k"), progress=False)
    recs, _ = _records(tmp_path / "k")
    assert [(r["video_id"], r["texts"]["en"]) for r in recs] == [
        ("video1", ["a dog runs fast"]), ("video2", ["cars drive"])]
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr7020,video9,a dog\n")
    with pytest.raises(RecordError, match=r"MSRVTT_JSFUSION_test.csv:2: video_id: video file not found"):
        pack("video-text", [str(csv)], str(vids), str(tmp_path / "k2"), progress=False)


def test_msrvtt_9k_training_split_leaves_out_the_1ka_test_videos(tmp_path, capsys):
    """--split train+validate+test --exclude-videos MSRVTT_JSFUSION_test.csv: the 9k split."""
    vids = tmp_path / "videos"
    os.makedirs(vids)
    for i in range(4):
        _frames(vids / f"video_{i}.json")
    info = write_json(tmp_path / "train_val_videodatainfo.json", {
        "videos": [{"video_id": f"video{i}", "split": s, "id": i}
                   for i, s in enumerate(["train", "validate", "test", "test"])],
        "sentences": [{"caption": f"caption {i}", "video_id": f"video{i}", "sen_id": i} for i in range(4)]})
    csv = tmp_path / "MSRVTT_JSFUSION_test.csv"
    csv.write_text("key,vid_key,video_id,sentence\nret0,msr7020,video3,caption three\n")
    rc, _, err = _cli(capsys, "pack", "video-text", "--ann", info, "--images", vids, "--out", tmp_path / "9k",
                      "--split", "train+validate+test", "--exclude-videos", csv, "--no-progress")
    assert rc == 0, err
    recs, _ = _records(tmp_path / "9k")
    assert [r["video_id"] for r in recs] == ["video0", "video1", "video2"]
    listed = tmp_path / "ids.txt"
    listed.write_text("video0\nvideo2\n")
    pack("video-text", [info], str(vids), str(tmp_path / "l"), exclude_videos=str(listed), progress=False)
    assert [r["video_id"] for r in _records(tmp_path / "l")[0]] == ["video1", "video3"]
    with pytest.raises(ConfigError, match="--exclude-videos .*: no such file"):
        pack("video-text", [info], str(vids), str(tmp_path / "m"), exclude_videos=str(tmp_path / "nope"),
             progress=False)


def test_msrvtt_qa_and_msvd_qa_as_published(tmp_path):
    vids = tmp_path / "v"
    os.makedirs(vids)
    _frames(vids / "video_6513.json")
    qa = write_json(tmp_path / "val_qa.json", [
        {"answer": "man", "category_id": 2, "id": 158581, "question": "who is singing?",
         "video_id": 6513}])
    answers = write_json(tmp_path / "ans.json", ["woman", "man"])
    pack("video-qa", [qa], str(vids), str(tmp_path / "m"), answer_list=answers, progress=False)
    recs, _ = _records(tmp_path / "m")
    assert [(r["video_id"], r["question_id"], r["answers"], r["label"]) for r in recs] == [
        ("video6513", 158581, ["man"], 1)]
    (vids / "youtube_mapping.txt").write_text("-4wsuPCjDBc_5_15 vid1\n")
    _frames(vids / "-4wsuPCjDBc_5_15.json")
    msvd = write_json(tmp_path / "msvd_test_qa.json", [
        {"answer": "cat", "id": 0, "question": "what is playing?", "video_id": 1},
        {"answer": "dog", "id": 1, "question": "what runs?", "video_id": 2}])
    with pytest.raises(RecordError, match=r"msvd_test_qa.json\[1\]: video_id: video file not found"):
        pack("video-qa", [msvd], str(vids), str(tmp_path / "d"), progress=False)
    pack("video-qa", [msvd], str(vids), str(tmp_path / "d2"), skip_bad=True, progress=False)
    recs, meta = _records(tmp_path / "d2")  # vid1 named through youtube_mapping.txt
    assert [(r["video_id"], r["question_id"]) for r in recs] == [("-4wsuPCjDBc_5_15", 0)]
    assert meta["skipped"]["by_field"] == {"video_id": 1}


def test_video_qa_answer_list_by_frequency_and_val_from_the_train_store(tmp_path, capsys):
    """Without --answer-list the published QA files' answers make the vocabulary (top
    --max-answers, default 1000, or --min-answer-count); val takes it from the train store."""
    vids = tmp_path / "v"
    os.makedirs(vids)
    for n in (1, 2):
        _frames(vids / f"video_{n}.json")
    answers = ["man", "woman", "man", "dog", "woman", "cat", "man"]
    train = write_json(tmp_path / "train_qa.json", [
        {"answer": a, "category_id": 0, "id": i, "question": f"q{i}?", "video_id": 1 + i % 2}
        for i, a in enumerate(answers)])
    val = write_json(tmp_path / "val_qa.json", [
        {"answer": "cat", "category_id": 0, "id": 100, "question": "what?", "video_id": 2},
        {"answer": "horse", "category_id": 0, "id": 101, "question": "which?", "video_id": 1}])
    rc, _, err = _cli(capsys, "pack", "video-qa", "--ann", train, "--images", vids, "--out",
                      tmp_path / "train", "--no-progress")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "train")
    assert meta["ans2label"] == {"man": 0, "woman": 1, "cat": 2, "dog": 3}  # count, then name
    assert meta["answer_list"] == ["man", "woman", "cat", "dog"]
    assert [r["label"] for r in recs] == [0, 1, 0, 3, 1, 2, 0]
    rc, _, err = _cli(capsys, "pack", "video-qa", "--ann", val, "--images", vids, "--out", tmp_path / "val",
                      "--answer-list", tmp_path / "train", "--no-progress")
    assert rc == 0, err
    recs, meta = _records(tmp_path / "val")
    assert meta["answer_list"] == ["man", "woman", "cat", "dog"]
    assert [r.get("label") for r in recs] == [2, None]  # "horse" is not in the training vocabulary
    for opts, kept in [({"max_answers": 2}, ["man", "woman"]), ({"min_answer_count": 2}, ["man", "woman"]),
                       ({"min_answer_count": 1, "max_answers": 3}, ["man", "woman", "cat"])]:
        out = tmp_path / f"o{len(os.listdir(tmp_path))}"
        pack("video-qa", [train], str(vids), str(out), progress=False, **opts)
        recs, meta = _records(out)
        assert meta["answer_list"] == kept
        assert sum("label" in r for r in recs) == sum(a in kept for a in answers)
    with pytest.raises(ConfigError, match="--max-answers must be at least 1, got 0"):
        pack("video-qa", [train], str(vids), str(tmp_path / "z"), max_answers=0, progress=False)
    with pytest.raises(InputError, match="no store .*empty|not an x2vlm store"):
        os.makedirs(tmp_path / "empty")
        pack("video-qa", [val], str(vids), str(tmp_path / "z2"), answer_list=str(tmp_path / "empty"),
             progress=False)
    native = write_jsonl(tmp_path / "native.jsonl", [{"video_id": "video1", "question": "q", "answer": "a"}])
    with pytest.raises(ConfigError, match="does not take --max-answers"):
        pack("video-qa", [native], str(vids), str(tmp_path / "z3"), max_answers=5, progress=False)


# --- detection, the override, undetectable files ----------------------------------------------

def test_layout_override_and_undetectable(tmp_path, capsys):
    ann = _karpathy(tmp_path)
    # forced to the native layout, the Karpathy object is not a JSON list/lines of records
    rc, out, err = _cli(capsys, "pack", "retrieval", "--ann", ann, "--layout", "native",
                        "--images", tmp_path / "coco", "--out", tmp_path / "n")
    assert rc != 0 and "missing image path" in err
    odd = tmp_path / "odd.json"  # an object over several lines cannot be JSON lines
    odd.write_text(json.dumps({"items": [{"a": 1}]}, indent=2))
    rc, out, err = _cli(capsys, "pack", "retrieval", "--ann", odd, "--out", tmp_path / "o")
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert "tried karpathy" in err and "coco-captions" in err and "--layout" in err
    with pytest.raises(ConfigError, match="no layout 'kaparthy'.*karpathy, coco-captions, native"):
        pack("retrieval", [ann], None, str(tmp_path / "x"), layout="kaparthy", progress=False)
    with pytest.raises(ConfigError, match="does not take --split"):
        native = write_json(tmp_path / "native.json", [{"image": "a.jpg", "caption": "c"}])
        pack("retrieval", [native], None, str(tmp_path / "y"), split="train", progress=False)
    with pytest.raises(InputError, match="different layouts"):
        pack("retrieval", [ann, native], None, str(tmp_path / "z"), progress=False)
