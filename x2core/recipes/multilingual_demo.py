"""``x2vlm multilingual-demo``: the XLM-R swap recipe end to end on the synthetic captions.

1. generate and pack the synthetic world (``x2core.recipes.demo.prepare_data``; captions in
   en/de/zh) and pack the held-out retrieval files of the three languages into one
   ``multilingual`` store (the Multi30K / xFlickr&CO layout, ``LANG=FILE``);
2. pretrain a tiny English model (BERT WordPiece text encoder, English captions only);
3. swap its text encoder for a tiny random-init XLM-R whose SentencePiece model is trained
   on the synthetic en/de/zh captions (the ``xlmr-swap`` adapter plugin): vision and fusion kept;
4. evaluate the swapped model zero-shot (its XLM-R is random: about chance);
5. train the swapped model on en/de/zh captions with CCLM-style learning rates (vision
   lr/2, text 2 lr, fusion lr; new parameters lr * lr_mult; mask_prob 0.4);
6. evaluate per-language retrieval on the held-out scenes, beside chance;
7. the IGLUE tasks (XVNLI, MaRVL, xGQA) from the multilingual model, per language beside
   the majority answer and chance, under IGLUE's zero-shot cross-lingual protocol (English
   fine-tuning) and fine-tuned on every language (``x2core.recipes.iglue_tasks``); write
   ``multilingual_results.json`` and ``multilingual_table.md``.

``parallel_text=true`` adds CCLM's parallel-text stream to step 5 (the synthetic training
captions paired across languages, ``parallel_text.jsonl`` packed as ``parallel-text``;
mask_prob 0.4, max_masks 16): the same run with and without it, under ``multilingual`` and
``multilingual_parallel`` of the same ``out_dir``, measure what the stream adds; the files
of that run end in ``_parallel``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from x2core.config import from_dict, merge, to_dict
from x2core.errors import ConfigError


@dataclass
class MultilingualDemoConfig:
    out_dir: str = "x2vlm-multilingual"
    seed: int = 0
    num_train: int = 1500             # training scenes (captions in en/de/zh)
    num_heldout: int = 100            # held-out scenes for retrieval
    image_size: int = 64
    english_steps: int = 300          # stage 1: English pretraining
    multilingual_steps: int = 800     # stage 2: after the swap, en/de/zh captions
    batch_size: int = 48
    lr: float = 1e-3                  # English pretraining
    # Stage 2, CCLM ratios (facts §1.3: lr 4e-5 with vision 2e-5, text 8e-5, cross 4e-5).
    ml_lr: float = 1e-3
    ml_vision_lr: float = 5e-4
    ml_text_lr: float = 2e-3
    ml_fusion_lr: float = 1e-3
    lr_mult: float = 2.0
    xlmr_sizes: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 64, "dropout": 0.0})
    spm_vocab_size: int = 400
    langs: list[str] = field(default_factory=lambda: ["en", "de", "zh"])
    parallel_text: bool = False       # stage 2 with CCLM's parallel-text stream beside the images
    # step 7: IGLUE tasks from the multilingual model ([]: skipped); "zero-shot" fine-tunes on
    # English and evaluates every language, "all" fine-tunes on every language
    iglue_protocols: list[str] = field(default_factory=lambda: ["zero-shot", "all"])
    iglue_epochs: int = 2
    threads: Optional[int] = None
    progress: bool = True


def _say(msg: str) -> None:
    print(msg, flush=True)


def _demo_config(cfg: MultilingualDemoConfig):
    from x2core.recipes.demo import DemoConfig
    return DemoConfig(out_dir=cfg.out_dir, seed=cfg.seed, num_train=cfg.num_train,
                      num_heldout=cfg.num_heldout, image_size=cfg.image_size, num_videos=0,
                      num_heldout_videos=0, langs=list(cfg.langs), eval_langs=list(cfg.langs),
                      progress=cfg.progress)


def prepare(cfg: MultilingualDemoConfig) -> dict[str, str]:
    """Synthetic data packed to LMDB, the multilingual held-out store and the SentencePiece model."""
    from x2core.recipes.demo import prepare_data
    from x2core.data.packing import pack
    from x2core.data.tokenizers import train_sentencepiece

    paths = prepare_data(_demo_config(cfg), steps=7)
    raw = Path(cfg.out_dir) / "synthetic"
    anns = [f"{lang}={raw / ('heldout_retrieval.json' if lang == 'en' else f'heldout_retrieval_{lang}.json')}"
            for lang in cfg.langs]
    store = Path(cfg.out_dir) / "lmdb" / "heldout_multilingual"
    pack("multilingual", anns, str(raw), str(store), progress=False)
    paths["heldout_multilingual"] = str(store)
    if cfg.parallel_text:
        from x2core.errors import InputError
        pairs = raw / "parallel_text.jsonl"
        if not pairs.exists():
            raise InputError(f"{pairs} is missing: {raw} was generated before the synthetic world "
                             "wrote translation pairs; remove it to regenerate")
        paths["parallel_text"] = str(Path(cfg.out_dir) / "lmdb" / "parallel_text")
        pack("parallel-text", [str(pairs)], None, paths["parallel_text"], progress=False)
    spm = raw / "xlmr_spm.model"
    if not spm.exists():
        texts = []
        for line in open(raw / "pretrain_image_text.jsonl", encoding="utf-8"):
            caption = json.loads(line)["caption"]
            texts.extend(caption[lang] for lang in cfg.langs if lang in caption)
        train_sentencepiece(texts, raw / "xlmr_spm", vocab_size=cfg.spm_vocab_size)
    paths["spm"] = str(spm.resolve())
    return paths


def english_config(cfg: MultilingualDemoConfig, paths: dict[str, str]):
    from x2core.recipes.demo import DemoConfig
    from x2core.train.config import TrainConfig

    overrides = {"vision": {"image_size": cfg.image_size}, "text": {"tokenizer": paths["vocab"]}}
    overrides = merge(overrides, DemoConfig().model_overrides)
    return from_dict(TrainConfig, {
        "model": "x2vlm-tiny", "model_overrides": overrides,
        "data": {"images": {"path": paths["images"], "kind": "image", "batch_size": cfg.batch_size,
                            "max_tokens": 24, "langs": ["en"], "crop_scale": [0.5, 1.0]}},
        "masking": {"max_masks": 4},
        "optim": {"lr": cfg.lr, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup": 0.05},
        "steps": cfg.english_steps, "seed": cfg.seed, "threads": cfg.threads,
        "output_dir": str(Path(cfg.out_dir) / "english"),
        "log_every": 10, "ckpt_every": cfg.english_steps, "keep_last": 1,
        "tensorboard": False, "progress": cfg.progress, "precision": "fp32"})


def multilingual_config(cfg: MultilingualDemoConfig, paths: dict[str, str], swap_dir: Path):
    from x2core.train.config import TrainConfig

    # no model: the run builds the swapped directory's own architecture (XLM-R text
    # encoder, its tokenizer and sizes), and its recorded new tensors get lr_mult
    data = {"images": {"path": paths["images"], "kind": "image", "batch_size": cfg.batch_size,
                       "max_tokens": 24, "langs": list(cfg.langs), "crop_scale": [0.5, 1.0]}}
    if cfg.parallel_text:  # the reference's mtexts masking; 24 tokens hold every synthetic caption
        data["parallel"] = {"path": paths["parallel_text"], "kind": "parallel-text",
                            "batch_size": cfg.batch_size, "max_tokens": 24, "mask_prob": 0.4,
                            "max_masks": 16}
    return from_dict(TrainConfig, {
        "init_from": str(Path(swap_dir).resolve()),
        "data": data,
        "masking": {"mask_prob": 0.4, "max_masks": 10},
        "optim": {"lr": cfg.ml_lr, "vision_lr": cfg.ml_vision_lr, "text_lr": cfg.ml_text_lr,
                  "fusion_lr": cfg.ml_fusion_lr, "lr_mult": cfg.lr_mult, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup": 0.05},
        "steps": cfg.multilingual_steps, "seed": cfg.seed + 1, "threads": cfg.threads,
        "output_dir": str(Path(cfg.out_dir) / f"multilingual{_suffix(cfg)}"),
        "log_every": 10, "ckpt_every": cfg.multilingual_steps, "keep_last": 1,
        "tensorboard": False, "progress": cfg.progress, "precision": "fp32"})


def _suffix(cfg: MultilingualDemoConfig) -> str:
    """``_parallel`` for the run with the parallel-text stream (its own folder and files)."""
    return "_parallel" if cfg.parallel_text else ""


def _train(tcfg) -> str:
    from x2core.train.checkpoint import latest_checkpoint
    from x2core.train.pretrain import train

    ckpts = Path(tcfg.output_dir) / "checkpoints"
    done = latest_checkpoint(ckpts)
    if done is None or not str(done).endswith(f"{tcfg.steps:08d}.pt"):
        train(tcfg, resume=True if done is not None else None)
    return str(latest_checkpoint(ckpts))


def run_iglue(cfg: MultilingualDemoConfig, model: str) -> dict:
    """Step 7: ``{protocol: {task: {lang: metrics}}}`` (each protocol's runs in
    ``out_dir/iglue[_parallel]/<protocol>/<task>``, resumable only by re-running)."""
    from x2core.recipes.iglue_tasks import PROTOCOLS, TASKS, pack_iglue, run_iglue_tasks

    if not cfg.iglue_protocols:
        return {}
    out = Path(cfg.out_dir) / f"iglue{_suffix(cfg)}"
    _say(f"[7/7] IGLUE tasks ({', '.join(TASKS)}) from the multilingual model: "
         + "; ".join(PROTOCOLS[p][1] for p in cfg.iglue_protocols))
    stores = pack_iglue(str(Path(cfg.out_dir) / "synthetic"), Path(cfg.out_dir) / "lmdb" / "iglue",
                        cfg.langs, progress=cfg.progress)
    overrides = [f"batch_size={cfg.batch_size}", f"optim.lr={cfg.lr:g}", f"seed={cfg.seed}",
                 f"progress={str(cfg.progress).lower()}"]
    return {p: run_iglue_tasks(model, stores, out / p, cfg.langs, protocol=p,
                               epochs=cfg.iglue_epochs,
                               overrides=overrides, say=_say)
            for p in cfg.iglue_protocols}


def run_synthetic_recipe(cfg: MultilingualDemoConfig | None = None, **overrides) -> dict:
    """Run the whole recipe; returns (and writes) the results."""
    from x2core.eval.multilingual import evaluate_multilingual, load_model, multilingual_table
    from x2core.recipes.iglue_tasks import PROTOCOLS, iglue_table
    from x2core.plugin_manager import registry

    cfg = cfg or MultilingualDemoConfig()
    if overrides:
        cfg = from_dict(MultilingualDemoConfig, {**to_dict(cfg), **overrides})
    unknown = [p for p in cfg.iglue_protocols if p not in PROTOCOLS]
    if unknown:  # before any training, not after minutes of it
        raise ConfigError(f"config field 'iglue_protocols' has {unknown}; known: {list(PROTOCOLS)}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = prepare(cfg)
    times = {"data": time.perf_counter() - t0}

    t = time.perf_counter()
    ecfg = english_config(cfg, paths)
    _say(f"[3/7] English pretraining: x2vlm-tiny (BERT WordPiece), {cfg.english_steps} steps, en captions")
    english = _train(ecfg)
    times["english"] = time.perf_counter() - t

    t = time.perf_counter()
    swap_dir = out / "swapped"
    _say(f"[4/7] swapping the text encoder for a random-init tiny XLM-R (spm on {'/'.join(cfg.langs)})")
    model, report = registry("adapters").build("xlmr-swap", english, paths["spm"], out=swap_dir,
                                               xlmr_config=cfg.xlmr_sizes, seed=cfg.seed)
    _say("      " + report.summary())
    store = paths["heldout_multilingual"]
    zero = evaluate_multilingual(model, store, langs=cfg.langs, max_tokens=24)
    times["swap_and_zero_shot"] = time.perf_counter() - t

    t = time.perf_counter()
    mcfg = multilingual_config(cfg, paths, swap_dir)
    _say(f"[5/7] multilingual training after the swap: {cfg.multilingual_steps} steps, "
         f"{'/'.join(cfg.langs)} captions{' + parallel text' if cfg.parallel_text else ''} (lr {cfg.ml_lr:g}, vision {cfg.ml_vision_lr:g}, "
         f"text {cfg.ml_text_lr:g}, fusion {cfg.ml_fusion_lr:g}, new x{cfg.lr_mult:g})")
    final_ckpt = _train(mcfg)
    times["multilingual"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("[6/7] per-language retrieval on the held-out scenes")
    final = evaluate_multilingual(load_model(final_ckpt), store, langs=cfg.langs, max_tokens=24)
    times["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    iglue = run_iglue(cfg, final_ckpt)
    times["iglue"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    results = {"zero_shot_after_swap": zero, "after_multilingual_training": final,
               "swap": {k: v for k, v in report.to_dict().items()
                        if k not in ("kept", "dropped", "from_xlmr")} | {"num_kept": len(report.kept)},
               "wall_time_s": {k: round(v, 1) for k, v in times.items()},
               "threads": torch.get_num_threads(), "english_checkpoint": english,
               "swapped_dir": str(swap_dir), "checkpoint": final_ckpt, "config": to_dict(cfg),
               "iglue": iglue}
    stream = " with the parallel-text stream" if cfg.parallel_text else ""
    table = (multilingual_table(final, title=f"after the swap + {cfg.multilingual_steps} steps of "
                                               f"multilingual training{stream} (ITC top-16 + ITM rerank)")
             + "\n\n" + multilingual_table(zero, title="zero-shot right after the swap "
                                                       "(random-init XLM-R)"))
    for protocol, per_task in iglue.items():
        table += "\n\n" + iglue_table(per_task, title=f"IGLUE tasks, {PROTOCOLS[protocol][1]} "
                                                         f"({cfg.iglue_epochs} epoch{'s' if cfg.iglue_epochs != 1 else ''} per task)")
    res_file, table_file = out / f"multilingual_results{_suffix(cfg)}.json", out / f"multilingual_table{_suffix(cfg)}.md"
    res_file.write_text(json.dumps(results, indent=2))
    table_file.write_text(table + "\n")
    _say("")
    _say(table)
    _say(f"\nwall time {times['total']:.0f}s (data {times['data']:.0f}s, English {times['english']:.0f}s, "
         f"multilingual {times['multilingual']:.0f}s, IGLUE {times['iglue']:.0f}s) "
         f"on {results['threads']} threads")
    _say(f"wrote {res_file} and {table_file}")
    return results
