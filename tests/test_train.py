"""The training loop: exact resume after SIGKILL, DDP on gloo, bad configs, checkpoints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE / "plugins_for_tests"


def write_config(tmp_path: Path, stores: dict, name: str, **extra) -> Path:
    cfg = {
        "model": "x2vlm-tiny",
        "model_overrides": {"text": {"dropout": 0.1}},
        "data": {
            "images": {"path": stores["images"], "kind": "image", "batch_size": 8, "max_tokens": 20},
            "regions": {"path": stores["regions"], "kind": "region", "batch_size": 8, "max_images": 3,
                        "max_tokens": 16, "iter_perc": 0.5},
        },
        "masking": {"max_masks": 4},
        "optim": {"lr": 3e-4},
        "steps": 8, "seed": 7, "log_every": 1, "ckpt_every": 3, "keep_last": 2,
        "tensorboard": False, "progress": False, "output_dir": str(tmp_path / name),
    }
    for key, value in extra.items():
        cfg[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), env.get("PYTHONPATH", "")])
    env["X2VLM_PLUGINS"] = "x2vlm_test_hooks"
    env["OMP_NUM_THREADS"] = "1"  # the same arithmetic in every process, and no oversubscription
    env.update(extra)
    return env


def run_cli(args, env, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "x2core", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"x2vlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def losses_by_step(run_dir: Path) -> dict[int, dict]:
    """Last record per step (a resumed run logs the steps after its checkpoint again)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = {k: v for k, v in rec.items()
                            if k.startswith("train/") and "samples_per_s" not in k}
    return out


def test_resume_after_sigkill_continues_exactly(tmp_path, synthetic_stores):
    full = write_config(tmp_path, synthetic_stores, "full")
    run_cli(["pretrain", str(full)], cli_env(X2VLM_TEST_DUMP_OPTIM_AT="4"))
    want = losses_by_step(tmp_path / "full")
    assert sorted(want) == list(range(1, 9))

    killed = write_config(tmp_path, synthetic_stores, "killed")
    proc = run_cli(["pretrain", str(killed)], cli_env(X2VLM_TEST_KILL_AT="5"), check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, no clean shutdown
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "step_00000003.pt").exists() and not (ckpts / "step_00000006.pt").exists()
    assert not list(ckpts.glob("*.tmp*"))  # atomic writes leave no partial file
    step_log = tmp_path / "resumed_steps.txt"
    run_cli(["pretrain", str(killed), "--resume"],
            cli_env(X2VLM_TEST_STEP_LOG=str(step_log), X2VLM_TEST_DUMP_OPTIM_AT="4"))
    # a resume, not a restart: the process ran only the steps after the checkpoint ...
    assert [int(s) for s in step_log.read_text().split()] == list(range(4, 9))
    # ... with the optimizer's moments restored: after its first step they equal those of
    # the uninterrupted run after step 4.
    moments_full = torch.load(tmp_path / "full" / "optim_step4.pt")
    moments_resumed = torch.load(tmp_path / "killed" / "optim_step4.pt")
    assert moments_full.keys() == moments_resumed.keys() and len(moments_full) > 10
    for i, st in moments_full.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], moments_resumed[i][key]), f"param {i} {key}"
    got = losses_by_step(tmp_path / "killed")
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step].keys() == want[step].keys()
        for key, value in want[step].items():
            assert got[step][key] == value, f"step {step} {key}: resumed {got[step][key]} vs {value}"


def test_ddp_two_ranks_on_gloo(tmp_path, synthetic_stores):
    """torchrun, 2 processes: identical parameters afterwards, and the step-1 losses equal
    one process's on the same global batch (the two ranks' batches concatenated)."""
    pytest.importorskip("torch.distributed.run")
    no_dropout = {"text": {"dropout": 0.0}, "fusion": {"dropout": 0.0}, "vision": {"drop_path_rate": 0.0}}
    cfg_path = write_config(tmp_path, synthetic_stores, "ddp", steps=3, ckpt_every=3,
                            model_overrides=no_dropout)
    env = cli_env(X2VLM_TEST_DUMP_PARAMS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "x2core", "pretrain", str(cfg_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = tmp_path / "ddp"
    p0 = torch.load(run_dir / "params_rank0.pt")
    p1 = torch.load(run_dir / "params_rank1.pt")
    assert p0.keys() == p1.keys()
    for k in p0:
        assert torch.equal(p0[k], p1[k]), f"rank 0 and rank 1 differ in {k}"
    # one checkpoint, written by rank 0 only, holding both ranks' RNG and data positions
    payload = torch.load(run_dir / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert len(payload["rng"]) == 2 and len(payload["loader"]) == 2
    logged = losses_by_step(run_dir)[1]

    # The same global batch in one process.
    from x2core.model.factory import build_model, model_config_for
    from x2core.train.config import load_train_config
    from x2core.train.distributed import DistInfo
    from x2core.train.pretrain import seed_everything
    from x2core.train.streams import build_streams

    cfg = load_train_config(str(cfg_path))
    seed_everything(cfg.seed)
    model = build_model(model_config_for(cfg.model, **cfg.model_overrides))
    firsts = [next(build_streams(cfg, model, DistInfo(rank=r, world_size=2))) for r in (0, 1)]
    model.train()
    for stream in ("images", "regions"):
        a, b = firsts[0][stream], firsts[1][stream]
        batch = {k: torch.cat([a[k], b[k]]) for k in a}
        if "idx_to_group_img" in a:
            batch["idx_to_group_img"] = torch.cat([a["idx_to_group_img"],
                                                   b["idx_to_group_img"] + a["image"].shape[0]])
        with torch.no_grad():
            losses = model(batch)
        # ITC is exact: features are gathered across ranks with gradients to the local slice.
        assert losses["itc"].item() == pytest.approx(logged[f"train/{stream}/itc"], rel=1e-4)
        # MLM / bbox are per-rank means then averaged: equal up to the ranks' token counts.
        assert losses["mlm"].item() == pytest.approx(logged[f"train/{stream}/mlm"], rel=0.1)
        if stream == "regions":
            assert losses["bbox"].item() == pytest.approx(logged["train/regions/bbox"], rel=0.1)


def _torchrun(cfg_path, env, *extra):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "x2core", "pretrain", str(cfg_path), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def test_fsdp_two_ranks_follow_ddp_and_resume_exactly(tmp_path, synthetic_stores):
    """strategy=fsdp (fully_shard on gloo): the same losses as DDP step for step, the same
    final weights, and a SIGKILLed FSDP run resumes from its gathered checkpoint exactly."""
    pytest.importorskip("torch.distributed.fsdp")
    runs = {}
    for name, strategy in (("ddp", "ddp"), ("fsdp", "fsdp"), ("fsdp_killed", "fsdp")):
        runs[name] = write_config(tmp_path, synthetic_stores, name, steps=4, ckpt_every=2,
                                  strategy=strategy)
    for name in ("ddp", "fsdp"):
        proc = _torchrun(runs[name], cli_env())
        assert proc.returncode == 0, proc.stderr[-4000:]
    ddp, sharded = losses_by_step(tmp_path / "ddp"), losses_by_step(tmp_path / "fsdp")
    assert sorted(ddp) == sorted(sharded) == [1, 2, 3, 4]
    for step in ddp:
        assert sharded[step].keys() == ddp[step].keys()
        for key, value in ddp[step].items():
            assert sharded[step][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)
    final = "checkpoints/step_00000004.pt"
    a = torch.load(tmp_path / "ddp" / final, weights_only=True)
    b = torch.load(tmp_path / "fsdp" / final, weights_only=True)
    assert b["strategy"] == "fsdp" and a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # gathered full tensors, not shards
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)

    killed = _torchrun(runs["fsdp_killed"], cli_env(X2VLM_TEST_KILL_AT="3"))
    assert killed.returncode != 0
    assert not (tmp_path / "fsdp_killed" / "checkpoints" / "step_00000004.pt").exists()
    resumed = _torchrun(runs["fsdp_killed"], cli_env(), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got = losses_by_step(tmp_path / "fsdp_killed")
    for step in range(1, 5):
        assert got[step] == sharded[step], f"step {step} after the FSDP resume"

    # A replicated checkpoint does not silently resume a sharded run (optimizer layouts differ).
    mixed = write_config(tmp_path, synthetic_stores, "ddp", steps=6, strategy="fsdp")
    refused = _torchrun(mixed, cli_env(), "--resume")
    assert refused.returncode != 0
    assert "replicated optimizer state" in refused.stderr and "fsdp" in refused.stderr


def test_bad_configs_are_one_line_errors(tmp_path, synthetic_stores):
    cfg = write_config(tmp_path, synthetic_stores, "bad")
    env = cli_env()
    cases = [
        (["optim.lrr=1"], "optim.lrr"),
        (["data.images.path=/nope/store"], "data.images.path"),
        (["model_overrides.text.name=no-such-encoder"], "no-such-encoder"),
        (["steps=zero"], "steps"),
    ]
    for overrides, needle in cases:
        proc = run_cli(["pretrain", str(cfg), *overrides], env, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    unknown = run_cli(["pretrain", str(cfg), "model_overrides.text.name=no-such-encoder"], env, check=False)
    assert "bert" in unknown.stderr and "xlm-roberta" in unknown.stderr  # lists the known names


def test_checkpoint_of_another_architecture_refuses_to_load(tmp_path, synthetic_stores):
    cfg = write_config(tmp_path, synthetic_stores, "arch", steps=3, ckpt_every=3)
    env = cli_env()
    run_cli(["pretrain", str(cfg)], env)
    proc = run_cli(["pretrain", str(cfg), "--resume", "model_overrides.fusion.num_layers=1",
                    "model_overrides.text.intermediate_size=96", "steps=6"], env, check=False)
    assert proc.returncode == 2
    assert "fusion_encoder.layer.1" in proc.stderr  # missing
    assert "intermediate.dense.weight" in proc.stderr and "(96, 64)" in proc.stderr  # shape clash


def test_nan_guard_skips_then_aborts(tmp_path, synthetic_stores):
    from x2core.train.config import load_train_config
    from x2core.train.pretrain import NonFiniteLossError, train

    cfg = load_train_config(str(write_config(tmp_path, synthetic_stores, "nan")),
                            ["optim.lr=1e30", "clip_grad=1e30", "max_nonfinite=2", "steps=50"])
    with pytest.raises(NonFiniteLossError, match="NaN/inf"):
        train(cfg)
    rows = losses_by_step(tmp_path / "nan")
    assert any(r.get("train/skipped") == 1.0 for r in rows.values())


def test_compile_option_trains_like_eager(tmp_path, synthetic_stores, monkeypatch):
    """`compile: true` wraps the whole multi-stream step in torch.compile; traced with the
    aot_eager backend (no code generation, CPU-fast) the losses follow the eager run."""
    from x2core.train.config import load_train_config
    from x2core.train.pretrain import train

    real_compile = torch.compile
    calls = []

    def aot_eager_compile(module, **kwargs):
        calls.append(type(module).__name__)
        return real_compile(module, backend="aot_eager", fullgraph=True)

    no_dropout = ['model_overrides={"text": {"dropout": 0.0}}', "steps=4"]
    eager = load_train_config(str(write_config(tmp_path, synthetic_stores, "eager")), no_dropout)
    train(eager)
    monkeypatch.setattr(torch, "compile", aot_eager_compile)
    torch._dynamo.reset()
    compiled = load_train_config(str(write_config(tmp_path, synthetic_stores, "compiled")),
                                 [*no_dropout, "compile=true"])
    train(compiled)
    assert calls == ["PretrainStep"]
    want, got = losses_by_step(tmp_path / "eager"), losses_by_step(tmp_path / "compiled")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    for step, row in want.items():
        for key, value in row.items():
            assert got[step][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, key)
