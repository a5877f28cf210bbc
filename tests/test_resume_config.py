"""`--resume` continues the saved run: a changed run-changing field is a one-line-per-field
error unless --allow-config-change (then it applies, the optimizer's lr included, and is
listed); output-only fields may change; a finished run says so. Runs also remove the
temporaries of checkpoint writes a killed run left behind."""
from __future__ import annotations

import json

import pytest

from test_train import write_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(capsys, argv):
    from x2core.cli.app import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _rows(run_dir):
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r}


def _plant_temporaries(ckpt_dir):
    stale = [ckpt_dir / ".step_00000004.pt.k2j_9xq1.tmp", ckpt_dir / ".latest.abcdefgh.tmp"]
    kept = [ckpt_dir / ".notes.txt.abcdefgh.tmp", ckpt_dir / "mine.tmp",
            ckpt_dir / ".step_00000004.pt.tmp"]  # not atomic_write's pattern
    for p in stale + kept:
        p.write_bytes(b"half a checkpoint")
    return stale, kept


def test_pretrain_resume_refuses_applies_and_reports_config_changes(tmp_path, synthetic_stores,
                                                                     capsys):
    from x2core.train.config import ScheduleConfig
    from x2core.train.optim import lr_factor

    cfg = str(write_config(tmp_path, synthetic_stores, "run", steps=2, ckpt_every=2))
    run_dir = tmp_path / "run"
    rc, _, err = _run(capsys, ["pretrain", cfg])
    assert rc == 0, err
    ckpts = run_dir / "checkpoints"
    stale, kept = _plant_temporaries(ckpts)
    complete = (ckpts / "step_00000002.pt").read_bytes()

    # finished: says so, exits 0; output-only fields (log_every, progress) may change
    rc, out, err = _run(capsys, ["pretrain", cfg, "--resume", "log_every=5", "progress=false",
                                 "data.images.num_workers=0"])
    assert rc == 0, err
    assert f"run {run_dir} already finished 2 of 2 steps; raise steps=" in out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert (ckpts / "step_00000002.pt").read_bytes() == complete

    # run-changing fields: one line each, old -> new, nothing trained
    changed = ["data.images.batch_size=4", "steps=4", "optim.lr=0.5"]
    rc, _, err = _run(capsys, ["pretrain", cfg, "--resume", *changed])
    assert rc == 2
    assert "data.images.batch_size: 8 -> 4" in err and "optim.lr: 0.0003 -> 0.5" in err \
        and "steps: 2 -> 4" in err and "--allow-config-change" in err
    assert "log_every" not in err and err.count(" -> ") == 3
    assert max(_rows(run_dir)) == 2

    # allowed: applied (the new lr on the new schedule) and listed
    rc, out, err = _run(capsys, ["pretrain", cfg, "--resume", "--allow-config-change", *changed])
    assert rc == 0, err
    assert "applying config changes" in out and "optim.lr: 0.0003 -> 0.5" in out
    rows = _rows(run_dir)
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[3]["train/lr"] == pytest.approx(0.5 * lr_factor(3, 4, ScheduleConfig()))


def test_finetune_resume_refuses_applies_and_reports_config_changes(tmp_path, synthetic_stores,
                                                                     capsys):
    from x2core.train.config import FinetuneConfig
    from x2core.train.optim import lr_factor

    run_dir = tmp_path / "ft"
    base = ["finetune", "head=retrieval", f"train={synthetic_stores['heldout_retrieval']}",
            "batch_size=8", "epochs=1", "optim.lr=1e-3", "progress=false", "log_every=1",
            f"output_dir={run_dir}"]
    rc, _, err = _run(capsys, base)
    assert rc == 0, err
    stale, kept = _plant_temporaries(run_dir / "checkpoints")

    rc, out, err = _run(capsys, base + ["log_every=2", "num_workers=0",
                                        f"eval={synthetic_stores['heldout_retrieval']}", "--resume"])
    assert rc == 0, err
    assert f"run {run_dir} already finished 1 of 1 epochs (2 steps); raise epochs=" in out
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)

    changed = ["epochs=2", "batch_size=4", "optim.lr=0.5", "head_options.itm_weight=0.5"]
    rc, _, err = _run(capsys, base + [*changed, "--resume"])
    assert rc == 2
    for line in ("epochs: 1 -> 2", "batch_size: 8 -> 4", "optim.lr: 0.001 -> 0.5",
                 "head_options.itm_weight: (unset) -> 0.5"):
        assert line in err, err
    assert err.count(" -> ") == 4
    assert max(_rows(run_dir)) == 2

    rc, out, err = _run(capsys, base + [*changed, "--resume", "--allow-config-change"])
    assert rc == 0, err
    assert "applying config changes" in out and "batch_size: 8 -> 4" in out
    rows = _rows(run_dir)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]  # the second epoch: 16 records / 4
    total = 2 * 4  # the schedule of the new config: 2 epochs of 4 steps
    assert rows[3]["train/lr"] == pytest.approx(0.5 * lr_factor(3, total, FinetuneConfig().schedule))


def test_config_changes_skip_output_only_fields_and_unknown_old_fields():
    from x2core.errors import ConfigError
    from x2core.train.resume_config import check_resume_config, config_changes, output_only

    for path in ("log_every", "progress", "tensorboard", "device", "num_workers",
                 "data.images.num_workers", "eval", "eval.val", "output_dir", "keep_last"):
        assert output_only(path), path
    for path in ("steps", "seed", "optim.lr", "data.images.batch_size", "data.images.path",
                 "head", "head_options.k_test", "train", "model_overrides.text.dropout",
                 "init_from", "grad_accum", "masking.max_masks", "batch_size", "epochs"):
        assert not output_only(path), path
    saved = {"steps": 2, "optim": {"lr": 1e-4, "betas": [0.9, 0.98]}, "data": {"a": {"path": "x"}},
             "log_every": 1}
    given = {"steps": 2, "optim": {"lr": 1e-4, "betas": (0.9, 0.98)},
             "data": {"a": {"path": "x"}, "b": {"path": "y"}}, "log_every": 9, "new_field": 1}
    assert config_changes(saved, given) == [("data.b.path", config_changes.__globals__["_UNSET"], "y")]
    assert check_resume_config(None, given, allow=False, source="c") == []
    with pytest.raises(ConfigError) as err:
        check_resume_config(saved, given, allow=False, source="ckpt.pt")
    assert "data.b.path: (unset) -> y" in str(err.value) and "ckpt.pt" in str(err.value)
    assert check_resume_config(saved, given, allow=True, source="c") == ["data.b.path: (unset) -> y"]


def test_remove_stale_temporaries_only_removes_atomic_write_leftovers(tmp_path):
    from x2core.train.checkpoint import remove_stale_temporaries, save_checkpoint

    save_checkpoint(tmp_path, 3, {"step": 3})
    stale, kept = _plant_temporaries(tmp_path)
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept)
    assert (tmp_path / "step_00000003.pt").exists() and (tmp_path / "latest").exists()
    assert remove_stale_temporaries(tmp_path / "absent") == []
