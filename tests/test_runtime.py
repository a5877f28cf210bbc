"""The training runtime fine-tuning shares with pretraining (x2core.train.runtime):
torch.compile, the NaN/inf abort and strategy=fsdp, and one TrainState for the hooks."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from x2core import hookimpl
from test_heads import stores  # noqa: F401  (session fixture)

NO_DROPOUT = ('model_overrides={"text": {"dropout": 0.0}, "fusion": {"dropout": 0.0}, '
              '"vision": {"drop_path_rate": 0.0}}')


def train_rows(run_dir: Path) -> dict[int, dict]:
    """``train/*`` values per step of a run's metrics.jsonl, without the timing."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        row = {k: v for k, v in rec.items() if k.startswith("train/") and not k.endswith("_per_s")}
        if row:
            out[rec["step"]] = row
    return out


class StateRecorder:
    """A plugin keeping what the lifecycle hooks receive."""

    def __init__(self):
        self.states = []

    @hookimpl
    def x2vlm_train_start(self, state):
        self.states.append(state)


def test_finetune_compile_gives_the_eager_losses(stores, tmp_path, monkeypatch):
    """`compile=true` compiles the head's training step (aot_eager: traced, no code
    generation) and the losses follow the eager run's; the hooks get the runtime's
    TrainState with the head as ``model``."""
    from x2core.plugin_manager import PluginManager
    from x2core.train.finetune import finetune, load_finetune_config
    from x2core.train.runtime import TrainState

    args = ["head=vqa-cls", f"train={stores['vqa_train']}", "batch_size=32", "steps=4",
            "optim.lr=1e-3", "progress=false", "log_every=1", "save_checkpoint=false", NO_DROPOUT]
    pm, recorder = PluginManager(autoload=False), StateRecorder()
    pm.register(recorder, name="recorder")
    finetune(load_finetune_config(None, args + [f"output_dir={tmp_path / 'eager'}"]),
             plugin_manager=pm)

    real_compile, compiled = torch.compile, []

    def aot_eager_compile(module, **kwargs):
        compiled.append(module)
        return real_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", aot_eager_compile)
    torch._dynamo.reset()
    finetune(load_finetune_config(None, args + ["compile=true", f"output_dir={tmp_path / 'compiled'}"]),
             plugin_manager=pm)
    torch._dynamo.reset()

    assert len(compiled) == 1 and compiled[0] is recorder.states[1].model  # the head
    for state in recorder.states:
        assert type(state) is TrainState and state.model.name == "vqa-cls"
        assert state.model.model is not None and state.dist.rank == 0
    want, got = train_rows(tmp_path / "eager"), train_rows(tmp_path / "compiled")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    for step, row in want.items():
        assert got[step].keys() == row.keys()
        for key, value in row.items():
            assert got[step][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)


def test_finetune_nonfinite_loss_skips_then_aborts_in_one_line(stores, tmp_path, monkeypatch, capsys):
    """lr=1e30 blows the weights up after the first update: the NaN/inf steps are skipped
    (logged with skipped=1), and the third in a row ends `x2vlm finetune` with one line."""
    from x2core.cli import app
    from x2core.plugin_manager import reset_plugin_manager

    monkeypatch.setenv("X2VLM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("X2VLM_PLUGINS", raising=False)
    reset_plugin_manager(None)
    out = tmp_path / "nan"
    try:
        rc = app.main(["finetune", "head=vqa-cls", f"train={stores['vqa_train']}", "batch_size=32",
                       "optim.lr=1e30", "clip_grad=1e30", "max_nonfinite=3", "epochs=1",
                       "progress=false", "log_every=1", f"output_dir={out}"])
    finally:
        reset_plugin_manager(None)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(err) == 1 and "loss was NaN/inf for 3 consecutive steps" in err[0], err
    rows = train_rows(out)
    assert rows[1]["train/skipped"] == 0.0  # the first update happened
    assert [rows[s]["train/skipped"] for s in sorted(rows)[1:]] == [1.0, 1.0]
    assert math.isnan(rows[2]["train/grad_norm"])  # a skipped update is not clipped
    assert not (out / "checkpoints").exists()  # aborted inside the first epoch


def test_finetune_fsdp_follows_ddp_and_resumes_on_two_ranks(stores, tmp_path):
    """torchrun, 2 ranks on gloo: strategy=fsdp (the head sharded with fully_shard) gives
    strategy=ddp's losses step for step, its evaluation (rank 0 evaluates a whole copy
    loaded with the gathered weights) and its final weights, as full tensors a single
    process `evaluate` reads; an FSDP run SIGKILLed in its second epoch resumes exactly."""
    from x2core.plugin_manager import PluginManager
    from x2core.train.finetune import evaluate, load_finetune_config

    args = ["head=vqa-cls", f"train={stores['vqa_train']}", f"eval={stores['vqa_heldout']}",
            "batch_size=32", "epochs=2", "eval_every=0", "optim.lr=1e-3",
            "progress=false", "log_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", X2VLM_PLUGINS="x2vlm_test_hooks",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "plugins_for_tests"),
                                           os.environ.get("PYTHONPATH", "")]))

    def torchrun(name, strategy, *extra, **env_extra):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node", "2", "-m", "x2core", "finetune", *args,
                               f"strategy={strategy}", f"output_dir={tmp_path / name}", *extra],
                              env={**env, **env_extra}, capture_output=True, text=True, timeout=600)

    for strategy in ("ddp", "fsdp"):
        proc = torchrun(strategy, strategy)
        assert proc.returncode == 0, proc.stderr[-4000:]
    ddp, sharded = train_rows(tmp_path / "ddp"), train_rows(tmp_path / "fsdp")
    steps = sorted(ddp)
    assert steps == sorted(sharded) and len(steps) >= 4 and len(steps) % 2 == 0
    for step, row in ddp.items():
        assert sharded[step].keys() == row.keys()
        for key, value in row.items():
            assert sharded[step][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)
    metrics = {s: json.loads((tmp_path / s / "metrics.json").read_text())["val"] for s in ("ddp", "fsdp")}
    assert metrics["fsdp"] == pytest.approx(metrics["ddp"], rel=1e-4, abs=1e-4)

    final = f"checkpoints/step_{steps[-1]:08d}.pt"
    a = torch.load(tmp_path / "ddp" / final, weights_only=True)
    b = torch.load(tmp_path / "fsdp" / final, weights_only=True)
    assert (a["strategy"], b["strategy"]) == ("replicated", "fsdp")
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:  # gathered full tensors, not shards
            if key.endswith(".key.bias"):
                # The loss does not depend on a key bias (softmax is shift-invariant): its
                # gradient is rounding noise, which AdamW turns into lr-sized steps.
                continue
            torch.testing.assert_close(b[part][key], a[part][key], rtol=1e-4, atol=1e-5, msg=key)
    ev = evaluate(load_finetune_config(None, args + [f"output_dir={tmp_path / 'single'}"]),
                  str(tmp_path / "fsdp" / final), plugin_manager=PluginManager(autoload=False))
    assert ev["val"] == pytest.approx(metrics["fsdp"], rel=1e-4, abs=1e-4)

    per_epoch = len(steps) // 2
    killed = torchrun("killed", "fsdp", X2VLM_TEST_KILL_AT=str(per_epoch + 1))
    assert killed.returncode != 0
    resumed = torchrun("killed", "fsdp", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert train_rows(tmp_path / "killed") == sharded
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["val"] == metrics["fsdp"]
