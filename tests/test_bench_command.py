"""`x2vlm bench` on a machine without a GPU: it says so, measures the tiny model, and
its MFU numerator is the counted forward + backward of the whole pretraining step."""
from __future__ import annotations

import json

import pytest
import torch


def test_bench_command_on_cpu_writes_results(tmp_path, capsys, monkeypatch):
    from x2core.cli.app import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench.json"
    rc = main(["bench", "--batch-size", "2", "--steps", "1", "--compile", "no", "--output", str(out),
               "--json"])
    assert rc == 0
    # --json: stdout is the JSON alone, the table moves to stderr; --output: the same JSON in a file
    captured = capsys.readouterr()
    assert "no GPU present" in captured.err and "x2vlm-tiny" in captured.err
    (row,) = json.loads(out.read_text())
    assert json.loads(captured.out) == [row]
    assert row["model"] == "x2vlm-tiny" and row["mode"] == "eager" and row["dtype"] == "float32"
    assert row["samples_per_s"] > 0 and row["tflops_per_step"] > 0 and row["peak_mem_gib"] > 0
    assert 0 < row["mfu"] <= 1.0
    assert row["achieved_tflops"] == pytest.approx(row["tflops_per_step"] * 1e3 / row["step_ms"])


def test_counted_step_flops_are_forward_plus_backward():
    """The MFU numerator is the whole step: the forward (ITC, ITM with its 3B fusion rows,
    MLM's second text pass, the box head) plus the backward, which costs about twice it."""
    from torch.utils.flop_counter import FlopCounterMode

    import x2core
    from x2core.train.bench import bench_train_step, synthetic_batch

    torch.manual_seed(0)
    model = x2core.create_model("x2vlm-tiny").train()
    batch = synthetic_batch(model, 4, torch.device("cpu"), regions=True)
    with FlopCounterMode(display=False) as fwd:
        loss = model(batch)["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    assert 1.7 < bwd.get_total_flops() / fwd.get_total_flops() < 2.3
    result = bench_train_step("x2vlm-tiny", batch_size=4, device=torch.device("cpu"), steps=1,
                              warmup=0, ceiling=1.0)
    counted = fwd.get_total_flops() + bwd.get_total_flops()
    assert result.tflops_per_step * 1e12 == pytest.approx(counted, rel=1e-9)
