"""Shared fixtures: a small synthetic dataset packed to LMDB once per test session."""
from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    """The suite runs its tiny models at one intra-op thread (unless OMP_NUM_THREADS says
    otherwise): measured faster than two on the 2-core CI machine (a VQA head fine-tune:
    29 s against 45 s), the same for every test whatever ran before it, and the same in
    the subprocesses the tests start. Benchmarks (--benchmark-only) set their own."""
    if config.getoption("benchmark_only", default=False):
        return
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy machine. Modules
    opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import os

    import torch

    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    # and the x2vlm commands called in-process keep it (x2core.data.threads honours the
    # variable instead of setting cores less workers)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session")
def synthetic_stores(tmp_path_factory):
    """``{"images", "regions", "heldout_retrieval", "heldout_grounding", "raw"}`` paths."""
    from x2core.data.packing import pack
    from x2datasets.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    raw = root / "raw"
    generate(str(raw), seed=0, num_train=96, num_heldout=16, image_size=64, langs=("en", "de"))
    out = {"raw": str(raw)}
    jobs = {"images": ("image-text", "pretrain_image_text.jsonl"),
            "regions": ("regions", "pretrain_regions.jsonl"),
            "heldout_retrieval": ("retrieval", "heldout_retrieval.json"),
            "heldout_grounding": ("regions", "heldout_grounding.jsonl")}
    for name, (fmt, ann) in jobs.items():
        pack(fmt, [str(raw / ann)], str(raw), str(root / name), progress=False)
        out[name] = str(root / name)
    return out


QUICK_DEMO_STEPS = 120  # enough for held-out similarity and grounding well above chance


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """What a new user runs first, once per session: ``x2vlm demo --quick`` in a subprocess.
    ``{"out", "stdout", "results", "run", "lmdb", "raw", "steps"}``; later commands
    (export, eval, fine-tune, predict) are fed the files it wrote."""
    import json
    import subprocess
    import sys

    import os
    from pathlib import Path

    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    kept = os.environ.get("X2VLM_TEST_QUICK_DEMO")  # iterating locally: a kept earlier run
    if kept and (Path(kept) / "demo_results.json").is_file():
        out = Path(kept)
    proc = subprocess.run([sys.executable, "-m", "x2core", "demo", "--quick", "--no-progress",
                           "--out", str(out), f"steps={QUICK_DEMO_STEPS}"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "run": out / "run", "lmdb": out / "lmdb",
            "raw": out / "synthetic", "steps": QUICK_DEMO_STEPS,
            "results": json.loads((out / "demo_results.json").read_text())}


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests skip cleanly where CUDA is absent (CI, laptops)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
