"""A head dataset's random draws (crops, flips, caption choice) are a function of
(run seed, epoch, sample index): DataLoader workers differ, epochs differ, and a
fine-tune SIGKILLed in its second epoch resumes to the uninterrupted run's losses,
evaluation and weights, bit for bit."""
from __future__ import annotations

import json

import pytest
import torch

from _finetune_runs import run_finetune, step_records



class _Store:
    """A stand-in for an LmdbReader: record i is ``{"i": i}``."""

    path = "fake-store"

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"i": i}


def _draw(rec, i, rng):
    return {"i": i, "value": rng.random()}


def _values(dataset, num_workers: int) -> list[float]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=False,
                                         num_workers=num_workers, collate_fn=list)
    return [item["value"] for batch in loader for item in batch]


def test_same_seed_epoch_index_draws_the_same_and_epochs_differ():
    from x2core.train.heads import StoreDataset

    a, b = StoreDataset(_Store(8), _draw), StoreDataset(_Store(8), _draw)
    a.set_epoch(3, seed=7)
    b.set_epoch(3, seed=7)
    assert [a[i]["value"] for i in range(8)] == [b[i]["value"] for i in range(8)]
    assert a[5]["value"] == a[5]["value"]  # an item does not depend on what was drawn before
    epoch3 = [a[i]["value"] for i in range(8)]
    a.set_epoch(4)  # the seed stays
    assert a.run_seed == 7
    epoch4 = [a[i]["value"] for i in range(8)]
    assert all(x != y for x, y in zip(epoch3, epoch4))
    b.set_epoch(3, seed=8)  # another run seed: other draws
    assert all(x != b[i]["value"] for i, x in enumerate(epoch3))
    assert len(set(epoch3)) == 8  # every sample its own stream
    # the constructor's seed (a third-party head's salt) still separates two datasets
    c = StoreDataset(_Store(8), _draw, None, 1)
    c.set_epoch(3, seed=7)
    assert all(x != c[i]["value"] for i, x in enumerate(epoch3))


def test_two_workers_draw_different_values_and_match_the_main_process():
    from x2core.train.heads import StoreDataset

    ds = StoreDataset(_Store(8), _draw)
    ds.set_epoch(0, seed=5)
    in_workers = _values(ds, num_workers=2)
    assert len(set(in_workers)) == 8  # worker 0's batches do not repeat worker 1's draws
    assert in_workers == _values(ds, num_workers=0)  # the number of workers does not matter
    ds.set_epoch(1)  # pickled into the (non-persistent) workers of the next iterator
    assert set(_values(ds, num_workers=2)).isdisjoint(in_workers)


def test_runner_sets_the_epoch_and_run_seed_before_each_epoch(synthetic_stores, tmp_path,
                                                                monkeypatch):
    from x2core.plugin_manager import PluginManager
    from x2core.train.finetune import finetune, load_finetune_config
    from x2core.train.heads import StoreDataset

    calls = []
    original = StoreDataset.set_epoch
    monkeypatch.setattr(StoreDataset, "set_epoch",
                        lambda self, epoch, seed=None: (calls.append((epoch, seed)),
                                                        original(self, epoch, seed))[1])
    cfg = load_finetune_config(None, ["head=retrieval", f"train={synthetic_stores['heldout_retrieval']}",
                                      "batch_size=8", "epochs=2", "seed=11", "progress=false",
                                      "save_checkpoint=false", f"output_dir={tmp_path}"])
    torch.set_num_threads(1)
    finetune(cfg, plugin_manager=PluginManager(autoload=False))
    assert calls == [(0, 11), (1, 11)]


# --- the real thing: SIGKILL in epoch 2, --resume --------------------------------------------

@pytest.fixture(scope="module")
def two_caption_store(synthetic_stores, tmp_path_factory):
    """32 image-text records with two captions each, so caption choice draws matter."""
    from x2core.data.store import LmdbReader, LmdbWriter

    src = LmdbReader(synthetic_stores["images"])
    path = str(tmp_path_factory.mktemp("two_captions") / "train")
    with LmdbWriter(path) as w:
        for i in range(32):
            rec = src[i]
            cap = rec["texts"]["en"][0]
            w.append({"image": rec["image"], "image_id": i,
                      "texts": {"en": [cap, " and ".join(reversed(cap.split(" and ")))]}})
        w.finish({})
    return path


# 0 workers with random crops: test_finetune.py::test_finetune_resumes_exactly_after_sigkill
@pytest.mark.parametrize("num_workers", [2], ids=["two-workers"])
def test_retrieval_finetune_resumes_exactly_with_augmentation(two_caption_store, synthetic_stores,
                                                               tmp_path, num_workers):
    """Retrieval head (train crop + flip + caption choice), 1 thread: killed in epoch 2,
    resumed, every step's losses, the evaluation and the final weights equal the
    uninterrupted run's (with the dataset's own generator, the resumed epoch drew anew)."""
    args = ["head=retrieval", f"train={two_caption_store}",
            f"eval={synthetic_stores['heldout_retrieval']}", "batch_size=8", "epochs=2",
            "optim.lr=1e-3", "progress=false", "log_every=1", "eval_every=0",
            f"num_workers={num_workers}"]
    def run(name, *extra, **env_extra):
        return run_finetune(args, tmp_path / name, *extra, **env_extra)

    def records(name):
        return step_records(tmp_path / name)

    full = run("full")
    assert full.returncode == 0, full.stderr[-3000:]
    want = records("full")
    per_epoch = 32 // 8
    assert max(want) == 2 * per_epoch
    killed = run("killed", X2VLM_TEST_KILL_AT=str(per_epoch + 2))
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run("killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = records("killed")
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == want[step], f"step {step}"
    name = f"step_{2 * per_epoch:08d}.pt"
    a = torch.load(tmp_path / "full" / "checkpoints" / name, weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / name, weights_only=True)
    for part in ("model", "head"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "full" / "metrics.json").read_text())
