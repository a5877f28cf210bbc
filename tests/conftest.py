"""Shared fixtures: a small synthetic dataset packed to LMDB once per test session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster and immune to a busy machine. Modules
    opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests skip cleanly where CUDA is absent (CI, laptops)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
