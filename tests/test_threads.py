"""Threads: main-process intra-op threads = cores less data workers (unless set), and the
0-worker data path makes its batches at one thread while the model step keeps its count."""
from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from x2core.data.threads import batches, intra_op_threads, main_threads
from x2core.errors import ConfigError


@pytest.fixture
def threads_back():
    """Restore the process's thread count (the tests below change it)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_the_rule():
    assert main_threads(None, 0, cores=8, env={}) == 8
    assert main_threads(None, 3, cores=8, env={}) == 5        # main + workers <= cores
    assert main_threads(None, 12, cores=8, env={}) == 1       # at least one
    assert main_threads(None, 2, cores=16, env={"LOCAL_WORLD_SIZE": "4"}) == 2  # 16 // 4 - 2
    assert main_threads(None, 0, cores=8, env={"OMP_NUM_THREADS": "3"}) is None  # the user's (or torchrun's)
    assert main_threads(6, 0, cores=8, env={"OMP_NUM_THREADS": "3"}) == 6        # threads= wins


class _ThreadsSeen(Dataset):
    """Each item is the intra-op thread count it was made with."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor(torch.get_num_threads())


def test_zero_worker_batches_are_made_at_one_thread_and_the_step_keeps_its_count(threads_back):
    torch.set_num_threads(2)
    seen_in_step = []
    for batch in batches(DataLoader(_ThreadsSeen(), batch_size=4)):
        assert batch.tolist() == [1, 1, 1, 1]
        seen_in_step.append(torch.get_num_threads())
    assert seen_in_step == [2, 2] and torch.get_num_threads() == 2
    with intra_op_threads(1):  # nested and restored
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_worker_processes_run_at_one_thread(threads_back):
    torch.set_num_threads(2)
    loader = DataLoader(_ThreadsSeen(), batch_size=4, num_workers=1)
    assert [b.tolist() for b in batches(loader)] == [[1, 1, 1, 1]] * 2


def test_a_bad_threads_field_is_one_line():
    from x2core.train.config import load_finetune_config

    with pytest.raises(ConfigError, match="'threads' must be >= 1") as err:
        load_finetune_config(None, ["head=retrieval", "threads=0"])
    assert "\n" not in str(err.value)


def test_finetune_command_sets_threads_and_its_data_runs_at_one(synthetic_stores, tmp_path, monkeypatch,
                                                                threads_back):
    """`x2vlm finetune ... threads=2 num_workers=0`: the step runs at 2 threads, every sample
    is made at 1; without threads= and OMP_NUM_THREADS, the cores less the workers."""
    from x2core.cli.app import main
    from x2core.data import threads as threads_mod
    from x2plugins.heads.retrieval import RetrievalHead

    made, stepped = [], []
    real_item, real_forward = RetrievalHead.build_dataset, RetrievalHead.forward

    def build_dataset(self, store, *, train):
        data = real_item(self, store, train=train)
        getitem = data.dataset.__getitem__
        data.dataset.__class__ = type("Spy", (type(data.dataset),), {
            "__getitem__": lambda ds, i: (made.append(torch.get_num_threads()), getitem(i))[1]})
        return data

    def forward(self, batch):
        stepped.append(torch.get_num_threads())
        return real_forward(self, batch)

    monkeypatch.setattr(RetrievalHead, "build_dataset", build_dataset)
    monkeypatch.setattr(RetrievalHead, "forward", forward)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    args = ["finetune", "head=retrieval", f"train={synthetic_stores['heldout_retrieval']}",
            "batch_size=8", "steps=2", "progress=false", "num_workers=0"]
    assert main(args + ["threads=2", f"output_dir={tmp_path / 'a'}"]) == 0
    assert set(made) == {1} and set(stepped) == {2}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["threads"] == 2

    monkeypatch.setattr(threads_mod, "available_cores", lambda: 3)
    made.clear(), stepped.clear()
    assert main(args + [f"output_dir={tmp_path / 'b'}"]) == 0
    assert set(stepped) == {3} and set(made) == {1}  # 3 cores, 0 workers
