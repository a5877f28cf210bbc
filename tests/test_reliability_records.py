"""Reliability of the record-reading path (issue #15): a damaged or malformed store record
fails at training / evaluation time with one line naming the store, the record and the
field -- an ``X2Error`` -- whatever the bytes are, in the main process or a DataLoader
worker, for every pretraining dataset and every built-in head's item function."""
from __future__ import annotations

import os
import subprocess
import sys

import msgpack
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from x2core.data.store import LmdbWriter, decode, encode, record_key
from x2core.errors import X2Error

from _data_files import jpeg_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = "/stores/fuzzed"  # the path the records below claim to come from
JPEG = jpeg_bytes((40, 32))
HEADS = ("retrieval", "vqa", "vqa-cls", "nlvr2", "grounding", "captioning", "classification",
         "video-retrieval", "video-qa")
# one record every head and pretraining dataset reads without complaint
GOOD = {"image": JPEG, "images": [JPEG, JPEG], "frames": [JPEG, JPEG], "width": 40, "height": 32,
        "texts": {"en": ["a red square"]}, "question": "what colour is it?", "answers": ["red"],
        "answer_weights": [1.0], "label": 1, "regions": [{"bbox": [2, 2, 20, 20],
                                                          "texts": {"en": ["a red square"]}}]}
META = {"answer_list": ["red", "blue"], "classes": ["circle", "square"], "count": 1}


class EncodedRecords:
    """A store of encoded records read through the LMDB reader's own record decoding."""

    path = FAKE
    meta = META

    def __init__(self, raw: list[bytes]):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int):
        return decode(self.raw[i], f"{self.path}: record {i} (key {record_key(i).decode()})")


@pytest.fixture(scope="module")
def readers():
    """``[(name, read(store) -> item of record 0)]``: the registered pretraining datasets and
    every built-in head's training dataset, on the tiny model."""
    import torch

    from x2core.data.datasets import ImageTextDataset, RegionTextDataset
    from x2core.data.text import TextProcessor
    from x2core.data.video_datasets import VideoTextDataset
    from x2core.model.factory import create_model
    from x2core.plugin_manager import PluginManager
    from x2core.train.config import MaskingConfig
    from x2core.train.heads import build_head

    torch.manual_seed(0)
    model = create_model("x2vlm-tiny")
    res, patch = model.config.vision.image_size, model.config.vision.patch_size
    text = TextProcessor.from_encoder(model.text_encoder, 16, MaskingConfig(max_masks=3), seed=0)
    out = []
    for name, make in [
            ("image", lambda s: ImageTextDataset(s, text, image_res=res)),
            ("region", lambda s: RegionTextDataset(s, text, image_res=res, patch_size=patch)),
            ("video", lambda s: VideoTextDataset(s, text, image_res=res, num_frames=2))]:
        out.append((name, lambda store, make=make: make(store)[0]))
    pm = PluginManager(autoload=False)
    good = EncodedRecords([encode(GOOD)])
    for name in HEADS:
        options = {"num_frames": 2} if name.startswith("video") else {}
        data = build_head(name, model, options, plugin_manager=pm).build_dataset(good, train=True)
        data.dataset[0]  # the good record is read fine: what fails below is the record's fault

        def read(store, ds=data.dataset):
            ds._reader = store  # the same item function, over the fuzzed store
            return ds[0]
        out.append((name, read))
    return out


def _assert_only_named_errors(readers, raw: bytes) -> None:
    store = EncodedRecords([raw])
    for name, read in readers:
        try:
            read(store)
        except X2Error as exc:
            msg = str(exc)
            assert "\n" not in msg, f"{name}: {msg}"
            assert FAKE in msg and "record 0" in msg, f"{name}: {msg}"
        except Exception as exc:  # noqa: BLE001 - what the test is about
            raise AssertionError(f"{name} raised {type(exc).__name__} on {raw[:80]!r}: {exc}") from exc


# msgpack values of every kind, the extension type included, with the record's own field
# names and well-formed parts mixed in so the fuzzing reaches past the first check
leaves = (st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
          | st.text(max_size=12) | st.binary(max_size=24) | st.just(JPEG) | st.just(JPEG[:60])
          | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=6)))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6) | st.sampled_from(list(GOOD)), inner, max_size=4),
                      max_leaves=12)
fields = st.sampled_from(list(GOOD))
records = (values
           | st.dictionaries(fields, values, max_size=6)
           | st.builds(lambda changes, drop: {**{k: v for k, v in GOOD.items() if k not in drop},
                                              **changes},
                       st.dictionaries(fields, values, max_size=3), st.sets(fields, max_size=3)))
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(record=records)
def test_random_msgpack_records_raise_only_named_errors(readers, record):
    _assert_only_named_errors(readers, encode(record))


@settings(FUZZ, max_examples=200)
@given(raw=st.binary(max_size=64) | st.builds(lambda r, n: encode(r)[:n], records, st.integers(0, 40)))
def test_random_and_truncated_bytes_raise_only_named_errors(readers, raw):
    _assert_only_named_errors(readers, raw)


def test_record_errors_name_the_field(readers):
    """The field is named where a malformed value trips a library, not only where checked."""
    cases = {"image": dict(GOOD, image="not bytes"), "regions[0].bbox": dict(
        GOOD, regions=[{"bbox": ["a", "b", "c", "d"], "texts": {"en": ["x"]}}]),
             "label": dict(GOOD, label="twelve")}
    by_name = dict(readers)
    for field, name in (("image", "image"), ("image", "retrieval"), ("regions[0].bbox", "region"),
                        ("regions[0].bbox", "grounding"), ("label", "nlvr2")):
        with pytest.raises(X2Error) as info:
            by_name[name](EncodedRecords([encode(cases[field])]))
        assert f"{FAKE}: record 0" in str(info.value) and f"field '{field}'" in str(info.value), \
            (name, str(info.value))


@pytest.mark.parametrize("head, bad, field", [
    ("retrieval", dict(GOOD, texts=5), "texts"),
    ("retrieval", dict(GOOD, image="not bytes"), "image"),
    ("grounding", dict(GOOD, regions=[{"bbox": [1, 2, 3, 4], "texts": {"en": [3]}}]),
     "regions[0].texts.en[0]"),
])
def test_evaluation_reads_name_the_record(head, bad, field):
    """Heads whose evaluation reads the store itself (retrieval's text index and images,
    grounding's queries) name the store, record and field of a malformed record too."""
    from x2core.model.factory import create_model
    from x2core.train.heads import build_head

    model = create_model("x2vlm-tiny").eval()
    h = build_head(head, model, {})
    store = EncodedRecords([encode(GOOD), encode(bad)])
    with pytest.raises(X2Error) as info:
        h.evaluate(store, batch_size=2)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and f"{FAKE}: record 1" in msg, msg
    assert field.split("[")[0] in msg, msg


# --- what a user runs -------------------------------------------------------------------------

def _store_with_bad_record(path, bad: bytes) -> str:
    with LmdbWriter(path) as w:
        for i in range(4):
            w.append({"image": JPEG, "width": 40, "height": 32, "texts": {"en": [f"red square {i}"]}})
        w.finish({"format": "image-text"})
    import lmdb
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:  # damage record 2 after the pack, as a bad disk would
        txn.put(record_key(2), bad)
    env.close()
    return str(path)


@pytest.mark.parametrize("bad, workers, says", ids=["str-image-in-a-worker", "garbage-bytes"], argvalues=[
    (encode({"image": "a string", "texts": {"en": ["x"]}}), 1,
     "record 2, field 'image': expected encoded image bytes, got str"),
    (b"\xc1\xc1\xc1 not msgpack", 0, "record 2 (key 0000000002): the stored bytes are not a msgpack "
                                     "record"),
])
def test_pretrain_on_a_bad_record_is_one_line(tmp_path, bad, workers, says):
    store = _store_with_bad_record(tmp_path / "store", bad)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": "x2vlm-tiny", "steps": 1, "log_every": 1, "tensorboard": False, "progress": False,
        "output_dir": str(tmp_path / "run"),
        "data": {"images": {"path": store, "kind": "image", "batch_size": 4, "max_tokens": 16,
                            "num_workers": workers}}}))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "x2core", "pretrain", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"x2vlm pretrain: error: {store}: {says}"), lines[0]
