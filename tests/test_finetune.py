"""The runner and the CLI: a third-party head from outside the package fine-tunes and
evaluates through `x2vlm finetune` / `x2vlm eval`; checkpoints round-trip."""
from __future__ import annotations

import json
import textwrap

import pytest

from _finetune_runs import run_finetune, step_records

from test_heads import stores  # noqa: F401  (session fixture)

THIRD_PARTY = textwrap.dedent('''
    """A third-party head: how many shapes are in the image (1-3), from the vision CLS."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from x2core import hookimpl
    from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, image_res,
                              load_image)


    class ShapeCount(HeadBase):
        name = "shape-count"
        train_fields = eval_fields = ("image", "regions")

        def __init__(self, model, options=None):
            super().__init__(model, options)
            self.mlp = nn.Linear(model.vision_encoder.width, 4)

        def build_dataset(self, store, *, train):
            res = image_res(self.model)
            def item(rec, i, rng):
                return {"image": load_image(rec["image"], res), "label": len(rec["regions"]),
                        "index": i}
            return HeadData(StoreDataset(store, item), collate)

        def forward(self, batch):
            e, _, _ = self.model.encode_image(batch["image"])
            return {"loss": F.cross_entropy(self.mlp(e[:, 0]), batch["label"])}

        def predict(self, batch):
            e, _, _ = self.model.encode_image(batch["image"])
            pred = self.mlp(e[:, 0]).argmax(1).tolist()
            return [{"index": int(i), "pred": p, "label": int(l)}
                    for i, p, l in zip(batch["index"], pred, batch["label"])]

        def compute_metrics(self, preds):
            return {"acc": 100.0 * sum(p["pred"] == p["label"] for p in preds) / len(preds)}


    @hookimpl
    def x2vlm_register_heads(register):
        register("shape-count", ShapeCount, description="count shapes (third-party test head)")
''')


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """`x2vlm` with the finetune/eval commands and the heads loaded from X2VLM_PLUGINS."""
    from x2core.cli import app as cli_mod
    from x2core.plugin_manager import reset_plugin_manager

    (tmp_path / "thirdparty_heads.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("X2VLM_PLUGINS", "thirdparty_heads")
    monkeypatch.setenv("X2VLM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setitem(cli_mod.COMMANDS, "finetune",
                        ("x2core.cli.finetune", "fine-tune a domain head and evaluate it"))
    monkeypatch.setitem(cli_mod.COMMANDS, "eval",
                        ("x2core.cli.eval", "evaluate a fine-tuned head checkpoint"))
    reset_plugin_manager(None)
    yield cli_mod.main
    reset_plugin_manager(None)


def test_third_party_head_finetunes_and_evaluates_through_cli(cli, stores, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(["finetune", "head=shape-count", f"train={stores['regions_train']}",
              f"eval={stores['regions_heldout']}", "epochs=3", "batch_size=32", "optim.lr=1e-3",
              "progress=false", f"output_dir={out}"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 60 and {"index", "pred", "label"} <= set(preds[0])
    ckpt = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
    eval_out = tmp_path / "eval"
    rc = cli(["eval", f"eval={stores['regions_heldout']}", f"output_dir={eval_out}",
              "progress=false", "--checkpoint", str(ckpt)])
    assert rc == 0, capsys.readouterr().err
    again = json.loads((eval_out / "metrics.json").read_text())
    assert again["val"]["acc"] == pytest.approx(metrics["val"]["acc"])


def test_cli_reports_missing_field_with_head_name(cli, stores, tmp_path, capsys):
    rc = cli(["finetune", "head=shape-count", f"train={stores['it_train']}", "epochs=1",
              "progress=false", f"output_dir={tmp_path / 'x'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "head 'shape-count' needs record field 'regions'" in err


def test_unknown_head_lists_known(cli, stores, tmp_path, capsys):
    rc = cli(["finetune", "head=nope", f"train={stores['it_train']}", "progress=false",
              f"output_dir={tmp_path / 'x'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown head 'nope'" in err and "shape-count" in err


def test_eval_checkpoint_roundtrip_and_init_from(stores, tmp_path):
    """vqa-cls: eval of the saved checkpoint reproduces the run's metrics; init_from a
    fine-tune checkpoint of the same head starts from its weights (same metrics at 0 steps)."""
    from x2core.train.finetune import evaluate, finetune, load_finetune_config
    from x2core.plugin_manager import PluginManager

    pm = PluginManager(autoload=False)
    base = ["head=vqa-cls", f"train={stores['vqa_train']}", f"eval={stores['vqa_heldout']}",
            "batch_size=32", "progress=false", "optim.lr=1e-3"]
    res = finetune(load_finetune_config(None, base + ["epochs=2", f"output_dir={tmp_path / 'a'}"]),
                   plugin_manager=pm)
    ev = evaluate(load_finetune_config(None, base + [f"output_dir={tmp_path / 'b'}"]),
                  res["checkpoint"], plugin_manager=pm)
    assert ev["val"]["vqa_acc"] == pytest.approx(res["val"]["vqa_acc"])
    again = finetune(load_finetune_config(None, base + ["epochs=0", f"init_from={res['checkpoint']}",
                                                        f"output_dir={tmp_path / 'c'}"]),
                     plugin_manager=pm)
    assert again["val"]["vqa_acc"] == pytest.approx(res["val"]["vqa_acc"])


def test_config_is_strict():
    from x2core.errors import ConfigError
    from x2core.train.finetune import load_finetune_config
    with pytest.raises(ConfigError, match="batch_sise"):
        load_finetune_config(None, ["head=vqa", "batch_sise=3"])
    with pytest.raises(ConfigError, match="'head' is required"):
        load_finetune_config(None, [])


def test_recipes_load():
    """Every shipped recipe validates against the schema."""
    from x2core.cli.configs import list_recipes
    from x2core.train.finetune import load_finetune_config
    recipes = [r.path for r in list_recipes() if r.task == "finetune"]
    assert len(recipes) >= 9
    for path in recipes:
        cfg = load_finetune_config(str(path))
        assert cfg.head


def test_finetune_under_torchrun_is_data_parallel(stores, tmp_path):
    """`torchrun --nproc_per_node 2 -m x2core finetune` with the retrieval head: the ranks
    split every epoch, end with identical weights, share the evaluation's ITM rerank
    (about half the pairs each), and rank 0 alone writes one checkpoint and the results,
    which a single-process `x2vlm eval` of that checkpoint reproduces exactly."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from x2core.train.finetune import build_head, evaluate, load_finetune_config
    from x2core.model.factory import create_model
    from x2core.plugin_manager import PluginManager
    from x2core.data.store import LmdbReader

    out = tmp_path / "ddp"
    args = ["head=retrieval", "head_options.k_test=8", f"train={stores['ret_heldout']}",
            f"eval={stores['ret_heldout']}", "batch_size=16", "epochs=2", "optim.lr=1e-3",
            "progress=false", "log_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", X2VLM_TEST_DUMP_PARAMS="1",
               X2VLM_TEST_COUNT_RERANK="1", X2VLM_PLUGINS="x2vlm_test_hooks",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "plugins_for_tests"),
                                           os.environ.get("PYTHONPATH", "")]))
    def torchrun(run_dir, *extra, **env_extra):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node", "2", "-m", "x2core", "finetune", *args,
                               f"output_dir={run_dir}", *extra], env={**env, **env_extra},
                              capture_output=True, text=True, timeout=600)

    proc = torchrun(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("checkpoint:") == 1  # printed by rank 0 only

    p0, p1 = torch.load(out / "params_rank0.pt"), torch.load(out / "params_rank1.pt")
    assert p0.keys() == p1.keys()
    for key in p0:
        assert torch.equal(p0[key], p1[key]), f"ranks differ in {key}"
    ckpts = list((out / "checkpoints").glob("step_*.pt"))
    assert len(ckpts) == 1

    # every step consumed 16 samples on each of the 2 ranks: half the single-process steps
    pm = PluginManager(autoload=False)
    head = build_head("retrieval", create_model("x2vlm-tiny"), {}, plugin_manager=pm)
    n = len(head.build_dataset(LmdbReader(stores["ret_heldout"]), train=True).dataset)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(line)]
    assert max(steps) == 2 * (n // 32)

    # both ranks reranked, each about half of the pairs (both directions, 2 evaluations)
    pairs = [json.loads((out / f"rerank_pairs_rank{r}.json").read_text()) for r in (0, 1)]
    assert min(pairs) > 0 and abs(pairs[0] - pairs[1]) <= 0.1 * sum(pairs), pairs

    written = json.loads((out / "metrics.json").read_text())["val"]
    ev = evaluate(load_finetune_config(None, args + [f"output_dir={tmp_path / 'single'}"]),
                  str(ckpts[0]), plugin_manager=pm)
    assert ev["val"] == pytest.approx(written)  # the shared evaluation = one process's

    # killed in its second epoch and resumed (each rank its own RNG, the sampler's epoch,
    # the random crops and ITM negatives): the uninterrupted run's losses, step for step
    def losses(run_dir):
        return {k: {m: v for m, v in rec.items() if m.startswith("train/")}
                for k, rec in step_records(run_dir).items()}
    killed = torchrun(tmp_path / "killed", X2VLM_TEST_KILL_AT=str(max(steps) // 2 + 1))
    assert killed.returncode != 0
    resumed = torchrun(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "killed") == losses(out)
    # and one process refuses to resume what two ranks wrote
    from x2core.errors import CheckpointError
    from x2core.train.finetune import finetune

    single = load_finetune_config(None, args + [f"output_dir={tmp_path / 'killed'}"])
    with pytest.raises(CheckpointError, match="written by 2 ranks"):
        finetune(single, plugin_manager=PluginManager(autoload=False), resume=True)


# grad_accum=1 takes the same path with every micro-batch an update, and the SIGKILL resume
# of the other fine-tune tests (test_finetune_resume_random, the torchrun ones) runs it.
@pytest.mark.parametrize("grad_accum,batch_size", [(2, 24)], ids=["accum2-odd"])
def test_finetune_resumes_exactly_after_sigkill(stores, tmp_path, grad_accum, batch_size):
    """A fine-tune killed (SIGKILL, no cleanup) in its third epoch resumes from the
    checkpoint written after the second: every step's losses, the evaluation and the final
    weights equal the uninterrupted run's. With grad_accum=2 over 37 batches per epoch the
    odd batch is skipped, so no partial accumulation crosses the checkpoint."""
    import torch

    # train_augment: random crops in the main process (0 workers), so the resumed epoch's
    # draws have to be the uninterrupted run's (test_finetune_resume_random does workers)
    args = ["head=vqa-cls", f"train={stores['vqa_train']}", f"eval={stores['vqa_heldout']}",
            f"batch_size={batch_size}", f"grad_accum={grad_accum}", "epochs=3", "optim.lr=1e-3",
            "progress=false", "log_every=1", "eval_every=0", "head_options.train_augment=true"]
    def run(name, *extra, **env_extra):
        return run_finetune(args, tmp_path / name, *extra, **env_extra)

    def records(name):
        return step_records(tmp_path / name)

    full = run("full", X2VLM_TEST_DUMP_OPTIM_AT="every")
    assert full.returncode == 0, full.stderr[-3000:]
    want = records("full")
    per_epoch = max(want) // 3
    assert per_epoch >= 2
    first_resumed = 2 * per_epoch + 1
    killed = run("killed", X2VLM_TEST_KILL_AT=str(first_resumed))
    assert killed.returncode == -9, killed.stderr[-3000:]
    ckpts = sorted((tmp_path / "killed" / "checkpoints").glob("step_*.pt"))
    assert [c.name for c in ckpts] == [f"step_{2 * per_epoch:08d}.pt"]  # the last epoch's only
    step_log = tmp_path / "resumed_steps.txt"
    resumed = run("killed", "--resume", X2VLM_TEST_STEP_LOG=str(step_log),
                  X2VLM_TEST_DUMP_OPTIM_AT=str(first_resumed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # a resume, not a restart: only the third epoch's steps ran, and after the first of them
    # the optimizer's moments equal the uninterrupted run's
    assert [int(s) for s in step_log.read_text().split()] == list(range(first_resumed, 3 * per_epoch + 1))
    m_full = torch.load(tmp_path / "full" / f"optim_step{first_resumed}.pt")
    m_resumed = torch.load(tmp_path / "killed" / f"optim_step{first_resumed}.pt")
    assert m_full.keys() == m_resumed.keys() and len(m_full) > 10
    for i, st in m_full.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], m_resumed[i][key]), f"param {i} {key}"
    got = records("killed")
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == want[step], f"step {step}"
    a = torch.load(tmp_path / "full" / "checkpoints" / f"step_{3 * per_epoch:08d}.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / f"step_{3 * per_epoch:08d}.pt", weights_only=True)
    for part in ("model", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "full" / "metrics.json").read_text())


@pytest.mark.parametrize("argv,want", [
    (["cfg.yaml", "epochs=2"], ("cfg.yaml", ["epochs=2"], None)),
    (["--resume", "cfg.yaml", "epochs=2"], ("cfg.yaml", ["epochs=2"], True)),
    (["cfg.yaml", "--resume", "epochs=2"], ("cfg.yaml", ["epochs=2"], True)),
    (["head=vqa", "epochs=2"], (None, ["head=vqa", "epochs=2"], None)),
])
def test_resume_flag_and_positional_arguments(argv, want):
    """`--resume` takes an optional CKPT, so argparse may hand it the config or an override."""
    import argparse

    from x2core.cli.finetune import add_arguments, split_config_arg

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert split_config_arg(parser.parse_args(argv)) == want


def test_grad_accum_beyond_the_epoch_is_a_config_error(stores, tmp_path):
    from x2core.errors import ConfigError
    from x2core.train.finetune import finetune, load_finetune_config
    from x2core.plugin_manager import PluginManager

    cfg = load_finetune_config(None, ["head=vqa-cls", f"train={stores['vqa_train']}",
                                      "batch_size=32", "grad_accum=1000", "progress=false",
                                      f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="grad_accum=1000 needs at least"):
        finetune(cfg, plugin_manager=PluginManager(autoload=False))
