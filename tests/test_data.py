"""Datasets over a tiny LMDB store, collate functions and the mixing loader."""
from __future__ import annotations

import functools
import io
import random

import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from x2core.model.boxes import boxes_to_patch_masks
from x2core.data.collate import collate_image_text, collate_regions
from x2core.data.datasets import ImageTextDataset, RegionTextDataset
from x2core.data.mixing import EpochBatchSampler, MixedLoader, StreamSpec
from x2core.errors import ConfigError, InputError
from x2core.data.masking import MaskingConfig, TextMaskingGenerator
from x2core.data.store import LmdbReader, LmdbWriter
from x2core.data.text import TextProcessor
from x2core.data.tokenizers import wordpiece_tokenizer
from x2core.data.transforms import CLIP_MEAN, CLIP_STD

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "man", "riding", "horse",
         "ein", "hund", "red", "box", "on", "the", "left", "blue", "photo", "of", "big", "cat",
         "thing", "shiny", "round"]
RES, PATCH, L = 32, 8, 12
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


def jpeg(img, quality=92):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pattern_image(i, size=(96, 72)):
    g = torch.Generator().manual_seed(i)
    arr = (torch.rand(size[1] // 8, size[0] // 8, 3, generator=g) * 255).to(torch.uint8)
    return Image.fromarray(arr.numpy()).resize(size, Image.Resampling.BILINEAR)


def two_colour_box(size, box):
    """Grey image; ``box`` left half red, right half blue (reveals flips)."""
    img = Image.new("RGB", size, GREY)
    x, y, w, h = box
    d = ImageDraw.Draw(img)
    d.rectangle([x, y, x + w // 2 - 1, y + h - 1], fill=RED)
    d.rectangle([x + w // 2, y, x + w - 1, y + h - 1], fill=BLUE)
    return img


def write_store(path, records):
    with LmdbWriter(path, map_size=1 << 26, commit_every=4) as w:
        for r in records:
            w.append(r)
        w.finish({"format": "test"})
    return LmdbReader(path)


@pytest.fixture(scope="module")
def tok():
    return wordpiece_tokenizer(WORDS)


@pytest.fixture(scope="module")
def text(tok):
    gen = TextMaskingGenerator.from_tokenizer(tok, MaskingConfig(mask_prob=0.5, max_masks=4),
                                              subword_style="wordpiece", seed=0)
    return TextProcessor(tok, L, gen)


@pytest.fixture(scope="module")
def image_store(tmp_path_factory):
    recs = [{"image": jpeg(pattern_image(i)), "width": 96, "height": 72,
             "texts": {"en": ["a dog", "a man riding a horse", "a big cat"], "de": ["ein hund"]},
             "source": {"file": "caps.jsonl", "index": i}} for i in range(12)]
    return write_store(tmp_path_factory.mktemp("img") / "store", recs)


REGION_BOX = [40, 30, 60, 40]


@pytest.fixture(scope="module")
def region_store(tmp_path_factory):
    rng = random.Random(0)
    recs = []
    for i in range(10):
        regions = [{"bbox": REGION_BOX, "texts": {"en": ["red blue box"]}, "attributes": ["shiny"]}]
        for _ in range(4):
            x, y = rng.uniform(0, 150), rng.uniform(0, 110)
            regions.append({"bbox": [x, y, rng.uniform(5, 160 - x), rng.uniform(5, 120 - y)],
                            "texts": {"en": ["a thing", "round thing"]}, "attributes": []})
        recs.append({"image": jpeg(two_colour_box((160, 120), REGION_BOX)), "width": 160,
                     "height": 120, "texts": {"en": ["a photo of a box"]}, "regions": regions})
    # a record whose captions mention "left": never flipped with careful_hflip
    recs.append({"image": jpeg(two_colour_box((160, 120), REGION_BOX)), "width": 160, "height": 120,
                 "texts": {"en": ["a photo"]},
                 "regions": [{"bbox": REGION_BOX, "texts": {"en": ["box on the left"]}}]})
    return write_store(tmp_path_factory.mktemp("reg") / "store", recs)


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# --- ImageTextDataset --------------------------------------------------------------------------

def test_image_text_sample_shapes(image_store, text):
    ds = ImageTextDataset(image_store, text, image_res=RES)
    assert len(ds) == 12
    s = ds[3]
    assert s["image"].shape == (3, RES, RES) and s["image"].dtype == torch.float32
    assert len(s["text_ids"]) == len(s["text_atts"]) == len(s["text_ids_masked"]) == L
    assert len(s["masked_pos"]) == len(s["masked_ids"]) == 4
    assert s["idx"] == 3
    assert same(s, ds[(0, 3)])  # an int key is epoch 0


def test_image_text_determinism_from_seed_epoch_index(image_store, text):
    a = ImageTextDataset(image_store, text, image_res=RES, seed=1)
    b = ImageTextDataset(image_store.path, text, image_res=RES, seed=1)  # from a path
    assert same(a[(2, 5)], b[(2, 5)])
    for _ in range(3):
        a[(0, 1)]  # other samples drawn in between change nothing
    assert same(a[(2, 5)], b[(2, 5)])
    epochs = [a[(e, 5)] for e in range(4)]
    assert not any(same(epochs[0]["image"], e["image"]) for e in epochs[1:])
    other_seed = ImageTextDataset(image_store, text, image_res=RES, seed=2)[(2, 5)]
    assert not same(other_seed["image"], a[(2, 5)]["image"])


def test_image_text_caption_choice_and_languages(image_store, text, tok):
    ds = ImageTextDataset(image_store, text, image_res=RES)
    seen = {tuple(ds[(e, 0)]["text_ids"]) for e in range(40)}
    assert len(seen) == 4  # 3 English + 1 German caption, all reached
    de = ImageTextDataset(image_store, text, image_res=RES, langs=["de"])
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(["ein", "hund"]) + [tok.sep_token_id]
    assert all(de[(e, 0)]["text_ids"][:4] == ids for e in range(10))
    with pytest.raises(InputError, match=r"record 0 \(from caps.jsonl, entry 0\), field 'texts'.*'fr'"):
        ImageTextDataset(image_store, text, image_res=RES, langs=["fr"])[0]


def test_eval_mode_is_a_fixed_resize(image_store, text):
    exact = ImageTextDataset(image_store, text, image_res=RES, train=False, jpeg_draft=False)
    assert same(exact[(0, 2)]["image"], exact[(7, 2)]["image"])
    img = Image.open(io.BytesIO(image_store[2]["image"])).convert("RGB").resize((RES, RES), Image.Resampling.BICUBIC)
    hwc = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(RES, RES, 3)
    ref = (hwc.permute(2, 0, 1).float() / 255
           - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(exact[2]["image"], ref, atol=1e-4)
    # the draft decode (96x72 JPEG -> 48x36 DCT scale) is close to it
    fast = ImageTextDataset(image_store, text, image_res=RES, train=False)
    assert (fast[2]["image"] - ref).abs().mean() < 0.1


def test_corrupt_image_names_record_and_field(tmp_path, text):
    good = jpeg(pattern_image(0))
    store = write_store(tmp_path / "s", [{"image": good, "texts": {"en": ["a dog"]}},
                                         {"image": good[:200], "texts": {"en": ["a dog"]}},
                                         {"image": good, "texts": {"en": ["?!"]}}])
    ds = ImageTextDataset(store, text, image_res=RES)
    ds[0]
    with pytest.raises(InputError, match=r"record 1, field 'image': cannot decode image"):
        ds[1]
    with pytest.raises(InputError, match=r"record 2, field 'texts': pre_caption leaves nothing"):
        ds[2]


# --- RegionTextDataset --------------------------------------------------------------------------

def _pixel_box(target):
    cx, cy, w, h = (v * RES for v in target)
    return [round(cx - w / 2, 6), round(cy - h / 2, 6), round(w, 6), round(h, 6)]


def _rgb(t):
    return (t * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)) * 255


def test_region_rows_masks_targets_whole_image_row(region_store, text):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=4)
    n = (RES // PATCH) ** 2
    for e in range(6):
        s = ds[(e, e % 10)]
        assert s["image"].shape == (3, RES, RES)
        rows = s["rows"]
        assert 2 <= len(rows) <= 4
        whole, regions = rows[0], rows[1:]
        assert whole["is_image"] == 1 and whole["target_bbox"] == [0.5, 0.5, 1.0, 1.0]
        assert torch.equal(whole["image_atts"], torch.ones(1 + n, dtype=torch.long))
        for row in regions:
            assert row["is_image"] == 0 and len(row["text_ids"]) == L
            box = _pixel_box(row["target_bbox"])
            assert 0 <= box[0] and box[0] + box[2] <= RES + 1e-6
            expected = boxes_to_patch_masks([box], RES, PATCH)[0]
            assert torch.equal(row["image_atts"], expected)


def test_region_chosen_box_follows_the_pixels_and_flips(region_store, text, tok):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=1,
                           use_whole_image_caption=False)
    shiny = tok.convert_tokens_to_ids("shiny")
    flips = []
    for e in range(40):
        s = ds[(e, 0)]
        (row,) = s["rows"]
        rgb = _rgb(s["image"])
        if row["text_ids"][1] != shiny:
            continue  # another region was chosen
        x, y, w, h = _pixel_box(row["target_bbox"])
        yc = int(y + h / 2)
        left = rgb[:, yc, int(x + w * 0.2)]
        right = rgb[:, yc, int(x + w * 0.8)]
        assert (left[0] > 150 and right[2] > 150) or (left[2] > 150 and right[0] > 150), (left, right)
        flips.append(bool(left[2] > 150))
    assert len(flips) >= 5 and True in flips and False in flips


def test_region_careful_hflip_never_flips_left_right_captions(region_store, text):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=2)
    careless = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=2,
                                 careful_hflip=False)
    last = len(region_store) - 1

    def red_on_left(s):
        row = s["rows"][-1]
        x, y, w, h = _pixel_box(row["target_bbox"])
        return bool(_rgb(s["image"])[0, int(y + h / 2), int(x + w * 0.2)] > 150)

    assert all(red_on_left(ds[(e, last)]) for e in range(30))
    assert not all(red_on_left(careless[(e, last)]) for e in range(30))


def test_region_determinism_and_attributes(region_store, text, tok):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, seed=3)
    assert same(ds[(1, 4)], RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, seed=3)[(1, 4)])
    assert not same(ds[(1, 4)]["image"], ds[(2, 4)]["image"])
    shiny = tok.convert_tokens_to_ids("shiny")
    one = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=5,
                            use_whole_image_caption=False)
    # the red/blue region is fully inside every crop that contains it; its caption
    # always starts with its attribute
    firsts = [r["text_ids"][1] for e in range(10) for r in one[(e, 0)]["rows"]]
    assert shiny in firsts


def test_region_bad_records(tmp_path, text):
    img = jpeg(pattern_image(0, (64, 48)))
    store = write_store(tmp_path / "s", [
        {"image": img, "regions": [{"bbox": [100, 100, 10, 10], "texts": {"en": ["a dog"]}}]},
        {"image": img, "regions": [{"bbox": [1, 2, 3], "texts": {"en": ["a dog"]}}]}])
    ds = RegionTextDataset(store, text, image_res=RES, patch_size=PATCH)
    with pytest.raises(InputError, match=r"record 0, field 'regions': no region"):
        ds[0]
    with pytest.raises(InputError, match=r"record 1, field 'regions\[0\].bbox'"):
        ds[1]
    with pytest.raises(ConfigError):
        RegionTextDataset(store, text, image_res=30, patch_size=PATCH)


# --- collate ------------------------------------------------------------------------------------

def test_collate_image_text(image_store, text):
    ds = ImageTextDataset(image_store, text, image_res=RES)
    b = collate_image_text([ds[i] for i in (0, 4, 7)])
    assert b["image"].shape == (3, 3, RES, RES)
    assert b["text_ids"].shape == b["text_atts"].shape == b["text_ids_masked"].shape == (3, L)
    assert b["masked_pos"].shape == b["masked_ids"].shape == (3, 4)
    assert b["text_ids"].dtype == torch.long and b["idx"].tolist() == [0, 4, 7]
    vids = [{"video": torch.zeros(2, 3, RES, RES), "text_ids": [1, 2], "text_atts": [1, 1], "idx": i}
            for i in range(2)]
    assert collate_image_text(vids)["video"].shape == (2, 2, 3, RES, RES)


def test_collate_regions_shapes_and_groups(region_store, text):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH)
    items = [ds[(0, i)] for i in range(3)]
    b = collate_regions(items)
    n_rows = sum(len(it["rows"]) for it in items)
    assert b["image"].shape == (3, 3, RES, RES)
    assert b["text_ids"].shape == (n_rows, L) and b["image_atts"].shape == (n_rows, 1 + (RES // PATCH) ** 2)
    assert b["target_bbox"].shape == (n_rows, 4) and b["target_bbox"].dtype == torch.float32
    assert b["is_image"].tolist().count(1) == 3
    expect = [i for i, it in enumerate(items) for _ in it["rows"]]
    assert b["idx_to_group_img"].tolist() == expect
    # rows keep their own fields after sub-sampling / padding
    def sig(group, ids, atts, box):
        return (int(group), tuple(ids), tuple(atts), tuple(round(v, 5) for v in box))

    originals = [sig(i, r["text_ids"], r["image_atts"].tolist(), r["target_bbox"])
                 for i, it in enumerate(items) for r in it["rows"]]
    for bs in (n_rows - 3, n_rows + 2, 3 * n_rows):
        c = collate_regions(items, batch_size=bs)
        assert c["text_ids"].shape[0] == c["image_atts"].shape[0] == c["idx_to_group_img"].shape[0] == bs
        got = [sig(g, ids, atts, box) for g, ids, atts, box in zip(
            c["idx_to_group_img"], c["text_ids"].tolist(), c["image_atts"].tolist(), c["target_bbox"].tolist())]
        assert all(g in originals for g in got)  # rows keep their fields together
        if bs > n_rows:
            assert set(got) == set(originals)  # padding keeps every row
    # deterministic from the batch's keys; an explicit rng overrides
    assert same(collate_regions(items, batch_size=5), collate_regions(items, batch_size=5))
    outs = {tuple(collate_regions(items, batch_size=5, rng=random.Random(s))["idx_to_group_img"].tolist())
            for s in range(10)}
    assert len(outs) > 1


# --- MixedLoader --------------------------------------------------------------------------------

def streams(image_store, region_store, text, workers=0, region_ratio=0.5):
    return {
        "images": StreamSpec(ImageTextDataset(image_store, text, image_res=RES), 4, collate_image_text,
                             num_workers=workers),
        "regions": StreamSpec(RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH),
                              2, functools.partial(collate_regions, batch_size=6),
                              num_workers=workers, ratio=region_ratio),
    }


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_mixed_loader_deterministic_and_resumable(image_store, region_store, text):
    ref = MixedLoader(streams(image_store, region_store, text), seed=7)
    full = take(ref, 9)
    assert all(s["images"]["image"].shape == (4, 3, RES, RES) for s in full)
    assert any(s["regions"] is None for s in full) and any(s["regions"] is not None for s in full)
    again = MixedLoader(streams(image_store, region_store, text), seed=7)
    assert same(take(again, 9), full)
    other = MixedLoader(streams(image_store, region_store, text), seed=8)
    assert not same(take(other, 3), full[:3])
    # resume after 5 steps (crosses the 3-batch epoch of the image stream)
    first = MixedLoader(streams(image_store, region_store, text), seed=7)
    take(first, 5)
    state = first.state_dict()
    first.close()
    assert state["step"] == 5 and state["streams"]["images"] == {"epoch": 1, "batch": 2}
    resumed = MixedLoader(streams(image_store, region_store, text), seed=7)
    resumed.load_state_dict(state)
    assert same(take(resumed, 4), full[5:9])


def test_mixed_loader_resume_with_workers(image_store, region_store, text):
    with MixedLoader(streams(image_store, region_store, text, workers=2), seed=11) as ref:
        full = take(ref, 7)
        state3 = None
    with MixedLoader(streams(image_store, region_store, text, workers=2), seed=11) as a:
        take(a, 3)
        state3 = a.state_dict()
    with MixedLoader(streams(image_store, region_store, text, workers=0), seed=11) as zero:
        assert same(take(zero, 7), full)  # worker count does not change the batches
    with MixedLoader(streams(image_store, region_store, text, workers=2), seed=11) as b:
        b.load_state_dict(state3)
        assert same(take(b, 4), full[3:7])


class Counting(Dataset):
    def __init__(self, n):
        self.n, self.calls = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        self.calls.append(key)
        return key[1]


def ints(items):
    return list(items)


def test_resume_skips_without_loading(tmp_path):
    ds = Counting(20)
    loader = MixedLoader({"x": StreamSpec(ds, 3, ints)}, seed=0)
    full = take(loader, 10)  # 6 batches per epoch: crosses into epoch 1
    state = {"step": 8, "streams": {"x": {"epoch": 1, "batch": 2}}}
    ds2 = Counting(20)
    resumed = MixedLoader({"x": StreamSpec(ds2, 3, ints)}, seed=0)
    resumed.load_state_dict(state)
    assert take(resumed, 2) == full[8:10]
    assert len(ds2.calls) == 6  # only the two batches asked for were loaded


def test_ratio_respected_and_deterministic():
    ds = Counting(50)
    loader = MixedLoader({"a": StreamSpec(ds, 5, ints), "b": StreamSpec(Counting(50), 5, ints, ratio=0.25)},
                         seed=3)
    steps = take(loader, 400)
    assert all(s["a"] is not None for s in steps)
    frac = sum(s["b"] is not None for s in steps) / 400
    assert 0.19 < frac < 0.31
    # presence is a function of (seed, step, name)
    again = MixedLoader({"a": StreamSpec(Counting(50), 5, ints),
                         "b": StreamSpec(Counting(50), 5, ints, ratio=0.25)}, seed=3)
    assert [again.present("b", i) for i in range(400)] == [s["b"] is not None for s in steps]
    # an absent stream does not advance: its first 10 batches are exactly one epoch
    b_batches = [s["b"] for s in steps if s["b"] is not None]
    assert sorted(i for b in b_batches[:10] for i in b) == list(range(50))
    assert loader.state_dict()["streams"]["b"]["batch"] + 10 * loader.state_dict()["streams"]["b"]["epoch"] \
        == len(b_batches)


def test_rank_sharding_disjoint_and_covering():
    for n, world in [(12, 3), (10, 3), (8, 2)]:
        per = n // world
        shards = [EpochBatchSampler(n, 1, seed=5, name="s", rank=r, world_size=world).shard(4).tolist()
                  for r in range(world)]
        assert all(len(s) == per for s in shards)
        flat = [i for s in shards for i in s]
        assert len(set(flat)) == len(flat) == per * world and set(flat) <= set(range(n))
        if n % world == 0:
            assert set(flat) == set(range(n))
    # through the loader: one epoch of every rank, batches of 2 out of 12 over 3 ranks
    seen = []
    for r in range(3):
        loader = MixedLoader({"x": StreamSpec(Counting(12), 2, ints)}, seed=1, rank=r, world_size=3)
        batches = take(loader, 2)  # 4 samples per rank = 2 batches = one epoch
        seen.append([k for b in batches for k in b["x"]])
        assert loader.state_dict()["streams"]["x"] == {"epoch": 1, "batch": 0}
    assert sorted(i for s in seen for i in s) == list(range(12))
    # epochs are different permutations
    s = EpochBatchSampler(100, 10, seed=0)
    assert s.shard(0).tolist() != s.shard(1).tolist()
    assert sorted(s.shard(1).tolist()) == list(range(100))


def test_loader_config_errors():
    with pytest.raises(ConfigError, match="ratio"):
        MixedLoader({"x": StreamSpec(Counting(4), 2, ints, ratio=0.0)}, seed=0)
    with pytest.raises(ConfigError, match="do not fill one batch"):
        MixedLoader({"x": StreamSpec(Counting(4), 3, ints)}, seed=0, world_size=2)
    with pytest.raises(ConfigError, match="rank"):
        MixedLoader({"x": StreamSpec(Counting(4), 1, ints)}, seed=0, rank=2, world_size=2)


def test_collated_batches_run_through_the_tiny_model(region_store, image_store):
    from x2core.model.factory import create_model
    model = create_model("x2vlm-tiny")
    res, patch = model.config.vision.image_size, model.config.vision.patch_size
    tp = TextProcessor.from_encoder(model.text_encoder, 16, MaskingConfig(max_masks=4))
    images = ImageTextDataset(image_store, tp, image_res=res)
    regions = RegionTextDataset(region_store, tp, image_res=res, patch_size=patch)
    with torch.no_grad():
        out = model(collate_image_text([images[i] for i in range(3)]))
        assert {"itc", "itm", "mlm"} <= set(out) and torch.isfinite(out["loss"])
        out = model(collate_regions([regions[i] for i in range(3)], batch_size=8))
        assert {"bbox", "giou"} <= set(out) and torch.isfinite(out["loss"])


def test_region_without_crop_keeps_the_whole_image_and_scales_boxes(region_store, text):
    ds = RegionTextDataset(region_store, text, image_res=RES, patch_size=PATCH, max_regions=5,
                           crop=False, careful_hflip=True, use_whole_image_caption=False)
    s = ds[(0, 10)]  # the "left" record: never flipped, one region = REGION_BOX of a 160x120 image
    x, y, w, h = REGION_BOX
    want = [(x + w / 2) / 160, (y + h / 2) / 120, w / 160, h / 120]
    assert s["rows"][0]["target_bbox"] == pytest.approx(want, abs=1e-6)
    centres = set()
    for e in range(12):
        rows = ds[(e, 0)]["rows"]
        assert len(rows) == 5  # no crop: every box stays
        box_row = [r["target_bbox"] for r in rows if r["target_bbox"][2:] == pytest.approx(want[2:])]
        centres.add(round(box_row[0][0], 4))
    assert centres == {round(want[0], 4), round(1 - want[0], 4)}  # mirrored on some epochs
