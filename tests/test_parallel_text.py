"""CCLM's parallel-text stream: the ``parallel-text`` pack format (TSV and JSON lines), the
dataset's pairing and masking rules, the cross-view losses for text pairs against a direct
computation, and a tiny image + parallel-text pretraining run that lowers the pair losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import x2core
from x2core.data.masking import MaskingConfig
from x2core.data.packing import RecordError, pack
from x2core.data.parallel_text import ParallelTextDataset, collate_parallel_text
from x2core.data.store import LmdbReader
from x2core.data.text import TextProcessor
from x2core.errors import ConfigError, InputError
from x2core.model.losses import itc_loss, mlm_loss, sample_hard_negatives
from x2core.train.config import StreamConfig, from_dict, TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = [("a red circle", "ein roter Kreis"), ("a blue square", "ein blaues Quadrat"),
         ("two green triangles", "zwei grüne Dreiecke"), ("a small white circle", "ein kleiner weißer Kreis")]


def _tiny(**kw):
    torch.manual_seed(0)
    return x2core.create_model("x2vlm-tiny", **kw)


def _pack(ann, out, **kw):
    pack("parallel-text", [str(ann)], None, str(out), progress=False, **kw)
    reader = LmdbReader(out)
    return [reader[i] for i in range(len(reader))]


# --- the pack format ------------------------------------------------------------------------

def test_tsv_with_a_header_and_json_lines_pack_the_same_pairs(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    # columns in any order, extra ones (a WikiMatrix score) ignored, blank lines skipped
    tsv.write_text("score\ttarget_text\tsource_text\ttarget_lang\tsource_lang\n"
                   + "".join(f"1.0\t{t}\t{s}\tde\tEN\n\n" for s, t in PAIRS), encoding="utf-8")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"source_text": s, "target_text": t}, ensure_ascii=False) + "\n"
                             for s, t in PAIRS), encoding="utf-8")
    from_tsv, from_jsonl = _pack(tsv, tmp_path / "a"), _pack(jsonl, tmp_path / "b")
    assert [(r["source_text"], r["target_text"]) for r in from_tsv] == PAIRS
    assert [(r["source_text"], r["target_text"]) for r in from_jsonl] == PAIRS
    assert {(r["source_lang"], r["target_lang"]) for r in from_tsv} == {("en", "de")}
    assert "source_lang" not in from_jsonl[0]  # languages are optional
    assert from_tsv[1]["source"] == {"file": os.path.abspath(tsv), "index": 4}  # line numbers


@pytest.mark.parametrize("name, text, where, field", [
    ("cols.tsv", "source_text\ttarget_text\na\tb\nonly one column\n", ":3", "(line)"),
    ("missing.jsonl", '{"source_text": "a", "target_text": "b"}\n{"source_text": "a"}\n', ":2", "target_text"),
    ("empty.jsonl", '{"source_text": "  ", "target_text": "b"}\n', ":1", "source_text"),
    ("lang.tsv", "source_text\ttarget_text\tsource_lang\na\tb\tenglish!\n", ":2", "source_lang"),
    ("json.jsonl", '{"source_text": "a", "target_text": "b"}\n{not json\n', ":2", "(line)"),
])
def test_a_bad_record_is_one_line_naming_file_line_and_field(tmp_path, name, text, where, field):
    ann = tmp_path / name
    ann.write_text(text, encoding="utf-8")
    with pytest.raises(RecordError) as err:
        _pack(ann, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and f"{ann}{where}: {field}:" in msg, msg


def test_the_pack_command_reads_a_tsv_and_refuses_a_bad_one_in_one_line(tmp_path):
    good, bad = tmp_path / "good.tsv", tmp_path / "bad.tsv"
    good.write_text("source_text\ttarget_text\n" + "".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    bad.write_text("source_text\ttarget_text\na\n", encoding="utf-8")
    run = [sys.executable, "-m", "x2core", "pack", "parallel-text", "--no-progress"]
    ok = subprocess.run(run + ["--ann", str(good), "--out", str(tmp_path / "s")], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert len(LmdbReader(tmp_path / "s")) == len(PAIRS)
    ko = subprocess.run(run + ["--ann", str(bad), "--out", str(tmp_path / "t")], capture_output=True,
                        text=True, timeout=300)
    lines = ko.stderr.strip().splitlines()
    assert ko.returncode != 0 and len(lines) == 1 and f"{bad}:2" in lines[0], ko.stderr


# --- the dataset: pairing and masking -------------------------------------------------------

def _dataset(model, records, **stream):
    stream = StreamConfig(path="x", kind="parallel-text", **stream)
    masking = stream.masking_for(MaskingConfig(mask_prob=0.15, max_masks=4))
    text = TextProcessor.from_encoder(model.text_encoder, stream.max_tokens, masking, seed=0,
                                      max_words=stream.max_words)
    return ParallelTextDataset(records, text, seed=3)


def test_masking_follows_the_stream_rules_and_the_order_of_a_pair_is_drawn():
    model = _tiny()
    long = " ".join(["circle square"] * 60)  # far over 64 tokens
    records = [{"source_text": s, "target_text": t} for s, t in PAIRS] + [{"source_text": long,
                                                                           "target_text": "ein Kreis"}]
    ds = _dataset(model, records, max_tokens=64, max_words=64, mask_prob=0.4, max_masks=16)
    assert ds.text.masking.config.mask_prob == 0.4 and ds.text.masking.config.mask_prob != 0.15
    firsts = set()
    for epoch in range(12):
        for i, rec in enumerate(records):
            s = ds[(epoch, i)]
            assert s == ds[(epoch, i)]  # a sample is a function of (seed, epoch, index)
            assert len(s["text_ids"]) == len(s["text_ids_2"]) == 64 and len(s["masked_pos"]) == 16
            n = sum(s["text_atts"])
            want = min(16, max(1, round(n * 0.4)))
            real = [p for p, label in zip(s["masked_pos"], s["masked_ids"]) if label != -100]
            assert len(real) == want and all(0 < p < n for p in real)
            assert [s["text_ids"][p] for p in real] == [lab for lab in s["masked_ids"] if lab != -100]
            # the second sentence is the other side, unmasked and unpadded identically
            first = ds.text.tokenize(rec["source_text"])
            is_source = s["text_ids"][:n] == first
            other = ds.plain.tokenize(rec["target_text" if is_source else "source_text"])
            assert s["text_ids_2"][:len(other)] == other and sum(s["text_atts_2"]) == len(other)
            firsts.add((i, is_source))
            if i == len(records) - 1 and is_source:
                assert n == 64 and len(real) == 16  # truncated to 64 tokens, capped at 16 masks
    assert len(firsts) == 2 * len(records)  # each pair is seen in both orders


def test_a_pair_record_without_its_sentences_names_the_field():
    ds = _dataset(_tiny(), [{"source_text": "a red circle"}])
    with pytest.raises(InputError, match="target_text"):
        ds[0]


def test_stream_masking_overrides_are_checked():
    with pytest.raises(ConfigError, match="data.parallel.mask_prob"):
        from_dict(TrainConfig, {"data": {"parallel": {"path": "x", "kind": "parallel-text", "mask_prob": 1.5}}})
    cfg = from_dict(TrainConfig, {"masking": {"mask_prob": 0.5, "max_masks": 12},
                                  "data": {"p": {"path": "x", "kind": "parallel-text", "max_masks": 16}}})
    masking = cfg.data["p"].masking_for(cfg.masking)
    assert (masking.mask_prob, masking.max_masks) == (0.5, 16)


# --- the losses -------------------------------------------------------------------------------

def _pair_batch(model):
    ds = _dataset(model, [{"source_text": s, "target_text": t} for s, t in PAIRS], max_tokens=16,
                  mask_prob=0.4, max_masks=6)
    return collate_parallel_text([ds[i] for i in range(len(PAIRS))])


def test_the_pair_losses_equal_their_direct_computation():
    model = _tiny().eval()  # no dropout: two forwards agree
    batch = _pair_batch(model)
    torch.manual_seed(5)
    out = model(batch)
    assert set(out) == {"ttc", "ttm", "mlm", "loss"}
    assert torch.allclose(out["loss"], out["ttc"] + out["ttm"] + out["mlm"])

    first = model.encode_text(batch["text_ids"], batch["text_atts"])
    second = model.encode_text(batch["text_ids_2"], batch["text_atts_2"])
    a1, a2 = batch["text_atts"], batch["text_atts_2"]
    f1, f2, temp = model.text_features(first), model.text_features(second), model.temperature()
    assert torch.allclose(out["ttc"], itc_loss(f1, f2, temp))
    # matching: the second sentence attends to the first; negatives are other rows' sentences
    torch.manual_seed(5)
    neg_first, neg_second = sample_hard_negatives(f1, f2, temp)
    rows = torch.arange(len(PAIRS))
    assert torch.all(neg_first != rows) and torch.all(neg_second != rows)

    def match(i1, i2):
        return model.itm_head(model.fusion_encoder(second[i2], a2[i2], first[i1], a1[i1])[:, 0])
    logits = torch.cat([match(rows, rows), match(neg_first, rows), match(rows, neg_second)])
    labels = torch.cat([torch.ones(4), torch.zeros(8)]).long()
    assert torch.allclose(out["ttm"], F.cross_entropy(logits, labels), atol=1e-6)
    # MLM: the masked first sentence fused with the (unmasked) second
    fused = model.fusion_encoder(model.text_encoder(batch["text_ids_masked"], a1), a1, second, a2)
    picked = fused.gather(1, batch["masked_pos"].unsqueeze(-1).expand(-1, -1, fused.shape[-1]))
    assert torch.allclose(out["mlm"], mlm_loss(model.mlm_head(picked), batch["masked_ids"]), atol=1e-6)
    # ... so the other sentence matters to it
    other = dict(batch, text_ids_2=batch["text_ids_2"].roll(1, 0), text_atts_2=batch["text_atts_2"].roll(1, 0))
    assert not torch.allclose(model(other)["mlm"], out["mlm"])
    assert set(model(batch, itm=False)) == {"ttc", "mlm", "loss"}  # stop_calc_itm: no ttm


def test_text_narrower_than_vision_is_refused_in_one_line():
    from x2core.train.streams import check_text_pairs

    model = _tiny(text={"hidden_size": 32})
    with pytest.raises(ConfigError, match="data.p.kind.*text width \\(32\\).*vision width \\(64\\)"):
        check_text_pairs(model, "data.p.kind")
    with pytest.raises(InputError, match="text width"):
        model(_pair_batch(model))


# --- a tiny run with an image stream and the parallel-text stream -----------------------------

def test_image_and_parallel_text_streams_train_together_and_lower_the_pair_losses(tmp_path, synthetic_stores):
    from x2core.train.pretrain import train

    # Same-language pairs (each English caption with itself). From scratch ttc first falls to
    # ln(batch) and sits there for tens of steps (symmetry breaking; the parallel-only run of
    # same-language pairs leaves it after ~30 steps); MLM and ttm fall at once.
    rows = [json.loads(line) for line in
            (Path(synthetic_stores["raw"]) / "parallel_text.jsonl").read_text().splitlines()]
    ann = tmp_path / "pairs.jsonl"
    ann.write_text("".join(json.dumps({"source_text": r["source_text"], "target_text": r["source_text"]})
                           + "\n" for r in rows))
    pairs = tmp_path / "pairs"
    pack("parallel-text", [str(ann)], None, str(pairs), progress=False)
    steps = 40
    cfg = from_dict(TrainConfig, {
        "model": "x2vlm-tiny",
        "data": {"images": {"path": synthetic_stores["images"], "kind": "image", "batch_size": 8,
                            "max_tokens": 20},
                 "parallel": {"path": str(pairs), "kind": "parallel-text", "batch_size": 16,
                              "max_tokens": 20, "mask_prob": 0.4, "max_masks": 8}},
        "masking": {"max_masks": 4}, "optim": {"lr": 3e-3}, "schedule": {"name": "constant", "warmup": 0},
        "steps": steps, "seed": 1, "log_every": 1, "ckpt_every": steps, "keep_last": 1,
        "tensorboard": False, "progress": False, "precision": "fp32", "output_dir": str(tmp_path / "run")})
    train(cfg)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "train/parallel/ttc" in r]
    assert len(logged) == steps and {"train/images/itc", "train/parallel/ttm", "train/parallel/mlm"} <= set(logged[0])

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)
    start, end = mean("train/parallel/mlm", logged[:5]), mean("train/parallel/mlm", logged[-5:])
    assert end < 0.85 * start, (start, end)
    for key in ("train/parallel/ttc", "train/parallel/ttm"):
        assert mean(key, logged[-5:]) < mean(key, logged[:5]), key
