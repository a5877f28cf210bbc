"""Helpers for tests that run ``x2vlm finetune`` in a subprocess (kill / resume tests):
one thread, the test-hook plugin loaded, and the logged step records read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run_finetune(args: list[str], output_dir, *extra: str, **env_extra: str):
    """``python -m x2core finetune ARGS output_dir=OUT EXTRA`` at one thread, with the
    ``x2vlm_test_hooks`` plugin (``X2VLM_TEST_KILL_AT`` and friends in ``env_extra``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", X2VLM_PLUGINS="x2vlm_test_hooks",
               PYTHONPATH=os.pathsep.join([str(HERE / "plugins_for_tests"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "x2core", "finetune", *args,
                           f"output_dir={output_dir}", *extra],
                          env={**env, **env_extra}, capture_output=True, text=True, timeout=600)


def step_records(run_dir) -> dict[int, dict]:
    """``{step: {train/* and eval/* values}}`` of a run's metrics.jsonl (rates left out:
    they are wall-clock measurements)."""
    out: dict[int, dict] = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(
            {k: v for k, v in rec.items() if k.startswith(("train/", "eval/"))
             and not k.endswith("_per_s")})
    return out
