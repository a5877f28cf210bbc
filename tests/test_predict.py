"""Inference on raw files: the model's own preprocessing, ``x2core.Predictor`` and
``x2vlm predict`` (values checked against the model's methods computed by hand)."""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest
import torch
from PIL import Image

import x2core
from x2core.cli.app import main
from x2core.config import from_dict, to_dict
from x2core.data.preprocess import image_preprocessing, video_preprocessing
from x2core.data.text import TextProcessor
from x2core.data.transforms import CLIP_MEAN, CLIP_STD, eval_image_transform, to_tensor_normalized
from x2core.errors import InputError
from x2core.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

TEXTS = ["a red square", "a blue circle on the left", "two green shapes"]


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def picture(w: int, h: int, seed: int) -> Image.Image:
    """Coloured blocks: distinct images give distinct embeddings."""
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):
        x, y = rng.randrange(w - 8), rng.randrange(h - 8)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + rng.randint(6, w - x),
                                                                y + rng.randint(6, h - y)))
    return img


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = x2core.create_model("x2vlm-tiny").eval()
    yield m
    m.attach_head(None)


@pytest.fixture
def bare(model):
    model.attach_head(None)
    return x2core.Predictor(model, device="cpu", batch_size=2)  # 2: several batches per call


def with_head(model, name, options=None, **attrs):
    head = x2core.get_plugin_manager().registry("heads").build(name, model, options or {})
    for k, v in attrs.items():
        setattr(head, k, v)
    model.attach_head(head)
    return head


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    paths = []
    for i, (w, h) in enumerate([(96, 64), (50, 120), (64, 64)]):
        p = d / f"img{i}.png"
        picture(w, h, i).save(p)
        paths.append(str(p))
    return d, paths


def by_hand(model, pixels: torch.Tensor, texts):
    """Image and text embeddings the way retrieval computes them."""
    rows = [TextProcessor(model.tokenizer, 40)(t) for t in texts]
    ids = torch.tensor([r["text_ids"] for r in rows])
    atts = torch.tensor([r["text_atts"] for r in rows])
    with torch.no_grad():
        img, _, _ = model.encode_image(pixels)
        txt = model.encode_text(ids, atts)
    return img, txt, atts


# --- preprocessing from the model --------------------------------------------------------------

def test_default_preprocessing_is_the_evaluation_transform_and_travels_with_the_model(model, tmp_path):
    data = encoded(picture(90, 60, 1), "JPEG")
    pre = model.image_transform()
    assert torch.equal(pre(data), eval_image_transform(data, 64))
    # a config of before the section loads with the defaults
    old = to_dict(model.config)
    del old["preprocess"]
    assert from_dict(ModelConfig, old).preprocess == ModelConfig().preprocess
    # a custom section is saved in the model directory and used by the loaded model
    custom = x2core.create_model("x2vlm-tiny", preprocess={"mean": [0, 0, 0], "std": [1, 1, 1],
                                                           "interpolation": "nearest"})
    loaded = x2core.from_pretrained(custom.save_pretrained(tmp_path / "m"))
    assert loaded.config.preprocess.interpolation == "nearest"
    img = picture(128, 128, 2)
    expected = to_tensor_normalized(img.resize((64, 64), Image.Resampling.NEAREST), (0, 0, 0), (1, 1, 1))
    assert torch.equal(loaded.image_transform()(img), expected)
    assert not torch.allclose(pre(img), expected)


def test_exif_rotated_jpeg_is_read_upright(model):
    upright = Image.new("RGB", (40, 80), (230, 20, 20))  # tall: red top, blue bottom
    upright.paste((20, 20, 230), (0, 40, 40, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": stored lying on its side
    stored = encoded(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes(), quality=95)
    assert Image.open(io.BytesIO(stored)).size == (80, 40)
    pre = model.image_transform()
    assert pre.load(stored).size == (40, 80)
    got, want = pre(stored), pre(upright)
    assert (got - want).abs().mean() < 0.05  # JPEG noise only; sideways would differ by ~1.5
    red, blue = got[0, :32].mean(), got[2, :32].mean()
    assert red > 1.0 > blue  # the top half is red


def test_png_and_webp_are_read(model):
    img = picture(70, 50, 3)
    pre = model.image_transform()
    want = pre(img)
    assert torch.equal(pre(encoded(img, "PNG")), want)
    assert torch.equal(pre(encoded(img, "WEBP", lossless=True)), want)
    assert torch.equal(pre(encoded(img.convert("RGBA"), "PNG")), want)  # alpha dropped, RGB kept


def test_corrupt_truncated_and_missing_files_name_the_file(bare, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(encoded(picture(90, 60, 0), "JPEG")[:200])
    for path in (bad, cut, tmp_path / "missing.png"):
        with pytest.raises(InputError) as err:
            bare.similarity([str(path)], TEXTS)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="image 1: not a readable image"):
        bare.similarity([picture(30, 30, 0), b"junk"], TEXTS)
    with pytest.raises(InputError, match="text 1 is empty"):
        bare.similarity([picture(30, 30, 0)], ["fine", "  "])


# --- the core model's tasks ----------------------------------------------------------------------

def test_similarity_is_the_itc_cosine(model, bare, files):
    _, paths = files
    pixels = torch.stack([eval_image_transform(open(p, "rb").read(), 64) for p in paths])
    img, txt, _ = by_hand(model, pixels, TEXTS)
    want = model.image_features(img) @ model.text_features(txt).T
    got = bare.similarity(paths, TEXTS)
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.std() > 1e-4  # distinct images and texts: not one repeated value


def test_match_is_the_itm_softmax_of_every_pair(model, bare, files):
    _, paths = files
    pixels = torch.stack([eval_image_transform(open(p, "rb").read(), 64) for p in paths[:2]])
    img, txt, atts = by_hand(model, pixels, TEXTS)
    want = torch.empty(2, 3)
    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                logits = model.itm_logits(img[i:i + 1], torch.ones(1, img.shape[1], dtype=torch.long),
                                          txt[j:j + 1], atts[j:j + 1])
                want[i, j] = logits.softmax(-1)[0, 1]
    got = bare.match(paths[:2], TEXTS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert ((got > 0) & (got < 1)).all()


def test_ground_maps_the_normalised_box_to_the_input_pixels(model, bare, tmp_path, monkeypatch):
    seen = {}

    def fixed_box(full, text_embeds, text_atts):  # the head's output: (cx, cy, w, h) of the square
        seen["shape"] = tuple(full.shape)
        return torch.tensor([[0.5, 0.25, 0.2, 0.1], [0.1, 0.9, 0.2, 0.2]]).repeat(len(full) // 2 + 1, 1)[:len(full)]

    monkeypatch.setattr(model, "predict_bbox", fixed_box)
    wide = picture(300, 100, 4)
    boxes = bare.ground(wide, TEXTS[:2])
    assert seen["shape"][0] == 2
    assert boxes[0] == pytest.approx([120, 20, 60, 10])
    assert boxes[1] == pytest.approx([0, 80, 60, 20])
    # an EXIF-rotated photo: boxes are in the upright image's pixels (100 x 300)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encoded(wide, "JPEG", exif=exif.tobytes())
    assert bare.ground(stored, TEXTS[:1])[0] == pytest.approx([40, 60, 20, 30])
    out = bare.draw(wide, TEXTS[:1], boxes[:1], tmp_path / "boxes.png")
    drawn = Image.open(out)
    assert drawn.size == (300, 100)
    assert drawn.getpixel((150, 20)) != wide.getpixel((150, 20))  # the box's top edge
    assert drawn.getpixel((150, 70)) == wide.getpixel((150, 70))  # outside every box


def test_zero_shot_classify_averages_the_prompts_per_label(model, bare):
    img = picture(64, 64, 5)
    labels, templates = ["cat", "red square"], ["a photo of a {}", "{} drawn"]
    prompts = [t.format(label) for label in labels for t in templates]
    pix = eval_image_transform(encoded(img, "PNG"), 64)[None]
    emb, txt, _ = by_hand(model, pix, prompts)
    with torch.no_grad():
        per_label = torch.nn.functional.normalize(model.text_features(txt).view(2, 2, -1).mean(1), dim=-1)
        want = ((model.image_features(emb) @ per_label.T) / model.temperature()).softmax(-1)[0]
    got = bare.classify([img], labels, templates=templates)[0]
    assert [r["label"] for r in got["top_k"]] == [labels[int(i)] for i in want.argsort(descending=True)]
    assert got["top_k"][0]["score"] == pytest.approx(float(want.max()), abs=1e-5)
    with pytest.raises(InputError, match="no '{}'"):
        bare.classify([img], labels, templates=["a photo"])


# --- tasks of a fine-tuned head -----------------------------------------------------------------

def test_missing_head_is_one_line_naming_the_head(model, bare):
    img = picture(40, 40, 0)
    for call, needs in ((lambda: bare.caption(img), "'captioning'"),
                        (lambda: bare.vqa(img, "what?"), "'vqa' or 'vqa-cls'"),
                        (lambda: bare.classify(img), "'classification'")):
        with pytest.raises(InputError) as err:
            call()
        msg = str(err.value)
        assert needs in msg and "has no head (a pretraining checkpoint)" in msg and "\n" not in msg
    with_head(model, "captioning")
    with pytest.raises(InputError, match="has the 'captioning' head"):
        x2core.Predictor(model, device="cpu").vqa(img, "what?")


def test_heads_answer_as_their_predict_does(model, files):
    _, paths = files
    pixels = torch.stack([eval_image_transform(open(p, "rb").read(), 64) for p in paths[:2]])
    answers = ["red", "blue", "green", "two"]
    q = TextProcessor(model.tokenizer, 40, max_words=None)("what colour is it?")
    batch = {"image": pixels[:1], "text_ids": torch.tensor([q["text_ids"]]),
             "text_atts": torch.tensor([q["text_atts"]]), "question_id": [0], "gt": [([], [])]}
    for name in ("vqa-cls", "vqa"):
        head = with_head(model, name, {"answer_list_size": 4} if name == "vqa-cls" else {"k_test": 3},
                         answer_list=answers)
        out = x2core.Predictor(model, device="cpu").vqa(paths[0], "what colour is it?", top_k=3)
        assert out["answer"] == head.predict(batch)[0]["answer"], name
        scores = [a["score"] for a in out["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-5
    head = with_head(model, "captioning", {"max_length": 5, "min_length": 1, "beam_size": 2})
    assert x2core.Predictor(model, device="cpu", batch_size=1).caption(paths[:2]) == head.generate(pixels)
    head = with_head(model, "classification", {"classes": ["a", "b", "c"]})
    got = x2core.Predictor(model, device="cpu").classify(paths[:2], top_k=3)
    want = head.class_probabilities(pixels)
    for g, w in zip(got, want):
        assert g["label"] == "abc"[int(w.argmax())]
        assert [r["score"] for r in g["top_k"]] == pytest.approx(sorted(w.tolist(), reverse=True), abs=1e-6)


def test_videos_use_the_models_frame_sampler(model, tmp_path):
    from x2core.data.video_datasets import load_video_tensor, make_frame_sampler
    from x2datasets.synthetic.videos import encode_mp4

    frames = [picture(64, 48, 10 + i) for i in range(6)]  # decord wants a width of 32k
    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(encode_mp4(frames))
    cfg = from_dict(ModelConfig, {**to_dict(model.config), "preprocess": {"num_frames": 4}})
    want = load_video_tensor({"video": mp4.read_bytes()}, num_frames=4, sampler=make_frame_sampler("segment"),
                             image_res=64, train=False, rng=random.Random(0))
    got = video_preprocessing(cfg)(str(mp4))
    assert got.shape == (4, 3, 64, 64) and torch.equal(got, want)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        f.save(folder / f"{i:03d}.png")
    assert video_preprocessing(cfg)(str(folder)).shape == (4, 3, 64, 64)
    assert video_preprocessing(ModelConfig()).num_frames == ModelConfig().video.max_frames

    model.attach_head(None)
    p = x2core.Predictor(model, device="cpu")
    sims = p.similarity(videos=[str(mp4), str(folder)], texts=TEXTS)
    with torch.no_grad():
        video = torch.stack([p.video_transform()(str(mp4)), p.video_transform()(str(folder))])
        emb, _ = model.encode_video(video)
        _, txt, _ = by_hand(model, video[:1, 0], TEXTS)
    torch.testing.assert_close(sims, model.image_features(emb) @ model.text_features(txt).T,
                               rtol=1e-5, atol=1e-5)
    head = with_head(model, "video-qa", {"num_frames": 3, "answer_list_size": 2}, answer_list=["left", "up"])
    out = x2core.Predictor(model, device="cpu").vqa(video=str(mp4), question="which way?", top_k=2)
    q = TextProcessor(model.tokenizer, 40, max_words=None)("which way?")
    batch = {"video": video_preprocessing(cfg, num_frames=3)(str(mp4))[None],
             "text_ids": torch.tensor([q["text_ids"]]), "text_atts": torch.tensor([q["text_atts"]])}
    with torch.no_grad():
        probs = head.logits(batch).softmax(-1)[0]
    assert out["answer"] == ["left", "up"][int(probs.argmax())]
    assert out["top_k"][0]["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    with pytest.raises(InputError, match="'vqa' or 'vqa-cls'"):
        x2core.Predictor(model, device="cpu").vqa(str(mp4), "which way?")


# --- x2vlm predict ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dirs(model, tmp_path_factory, files):
    d = tmp_path_factory.mktemp("models")
    model.attach_head(None)
    out = {"core": str(model.save_pretrained(d / "core"))}
    for name, options, attrs in (
            ("captioning", {"max_length": 5, "min_length": 1, "beam_size": 2}, {}),
            ("vqa-cls", {"answer_list_size": 3}, {"answer_list": ["red", "blue", "green"]}),
            ("classification", {"classes": ["cat", "dog"]}, {})):
        with_head(model, name, options, **attrs)
        out[name] = str(model.save_pretrained(d / name))
    model.attach_head(None)
    return out


def cli_json(capsys, *argv):
    assert main(["predict", *argv, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_task_prints_json_from_the_command_line(model_dirs, files, capsys, tmp_path):
    _, paths = files
    core = model_dirs["core"]
    imgs = ["--image", paths[0], "--image", paths[1]]
    sim = cli_json(capsys, core, "--task", "similarity", *imgs, "--text", TEXTS[0], "--text", TEXTS[1])
    want = x2core.Predictor.from_pretrained(core, device="cpu").similarity(paths[:2], TEXTS[:2])
    torch.testing.assert_close(torch.tensor(sim["scores"]), want, rtol=1e-5, atol=1e-5)
    assert sim["images"] == paths[:2]
    match = cli_json(capsys, core, "--task", "match", *imgs, "--text", TEXTS[0])
    assert len(match["scores"]) == 2 and all(0 < s[0] < 1 for s in match["scores"])
    png = tmp_path / "g.png"
    ground = cli_json(capsys, core, "--task", "ground", "--image", paths[1], "--text", TEXTS[0], "--draw", str(png))
    box = ground["results"][0]["boxes"][0]["box"]
    assert len(box) == 4 and box[0] + box[2] <= 50 + 1e-4 and box[1] + box[3] <= 120 + 1e-4  # 50 x 120 image
    assert Image.open(png).size == (50, 120) and ground["drawn"] == str(png)
    zs = cli_json(capsys, core, "--task", "classify", *imgs, "--labels", "cat, dog,red", "--top-k", "2")
    assert [len(r["top_k"]) for r in zs["results"]] == [2, 2] and zs["results"][0]["label"] in ("cat", "dog", "red")
    cls = cli_json(capsys, model_dirs["classification"], "--task", "classify", *imgs)
    assert cls["mode"] == "classification head" and {r["label"] for r in cls["results"]} <= {"cat", "dog"}
    cap = cli_json(capsys, model_dirs["captioning"], "--task", "caption", *imgs)
    assert [r["image"] for r in cap["results"]] == paths[:2] and all(isinstance(r["caption"], str)
                                                                     for r in cap["results"])
    vqa = cli_json(capsys, model_dirs["vqa-cls"], "--task", "vqa", "--image", paths[0],
                   "--text", "what colour?", "--text", "and here?", "--top-k", "2")
    assert [r["question"] for r in vqa["results"]] == ["what colour?", "and here?"]
    assert all(r["answer"] in ("red", "blue", "green") and len(r["top_k"]) == 2 for r in vqa["results"])


def test_command_line_errors_are_one_line(model_dirs, files, capsys, tmp_path):
    _, paths = files
    bad = tmp_path / "broken.webp"
    bad.write_bytes(b"RIFF....WEBPjunk")
    for argv, words in (([model_dirs["core"], "--task", "caption", "--image", paths[0]], "'captioning' head"),
                        ([model_dirs["core"], "--task", "match", "--image", str(bad), "--text", "x"], str(bad)),
                        ([model_dirs["core"], "--task", "vqa", "--image", paths[0]], "needs --text")):
        assert main(["predict", *argv, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err and err.startswith("x2vlm predict: error:")


def test_x2vlm_predict_as_a_user_runs_it(model_dirs, files, capsys):
    """The entry point in a fresh process prints valid JSON; the table names each file."""
    _, paths = files
    argv = ["predict", model_dirs["core"], "--task", "similarity", "--image", paths[0],
            "--text", TEXTS[0], "--text", TEXTS[2], "--device", "cpu"]
    out = subprocess.run([sys.executable, "-m", "x2core", *argv, "--json"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["texts"] == [TEXTS[0], TEXTS[2]] and len(data["scores"][0]) == 2
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert paths[0][-20:] in table and "ITC cosine similarity" in table
    assert f"{data['scores'][0][1]:.4f}" in table


def test_preprocessing_config_is_validated():
    from x2core.errors import ConfigError

    with pytest.raises(ConfigError, match="preprocess.std"):
        x2core.create_model("x2vlm-tiny", preprocess={"std": [0.2, 0, 0.2]})
    with pytest.raises(ConfigError, match="preprocess.interpolation"):
        from_dict(ModelConfig, {"preprocess": {"interpolation": "cubic"}})
    cfg = from_dict(ModelConfig, {"video": {"max_frames": 4}, "preprocess": {"num_frames": 6}})
    with pytest.raises(ConfigError, match="preprocess.num_frames"):
        video_preprocessing(cfg)
    assert image_preprocessing(ModelConfig()).mean == CLIP_MEAN and image_preprocessing(ModelConfig()).std == CLIP_STD
