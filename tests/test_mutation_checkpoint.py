"""In-process tests of x2core.train.checkpoint by value: file names and the ``latest``
pointer, pruning, atomicity, refusal of bad files, RNG state round trips (python, numpy,
torch; CUDA through fakes) and the resume checks. The subprocess training tests reach this
module too, but mutation runs exclude them, so every function is pinned down here."""
from __future__ import annotations

import fractions
import io
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from x2core.errors import CheckpointError
from x2core.train import checkpoint as ckpt


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _touch_steps(d: Path, *steps: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / f"step_{s:08d}.pt" for s in steps]
    for p in paths:
        torch.save({"step": p.name}, p)
    return paths


# --- save / list / latest ----------------------------------------------------------

def test_save_names_the_file_by_step_points_latest_at_it_and_leaves_no_temporaries(tmp_path):
    d = tmp_path / "new" / "checkpoints"          # created on first save
    path = ckpt.save_checkpoint(d, 5, {"w": torch.arange(3.0), "step": 5})
    assert path == d / "step_00000005.pt"
    assert _files(d) == ["latest", "step_00000005.pt"]
    assert (d / "latest").read_text() == "step_00000005.pt\n"
    loaded = ckpt.load_checkpoint(path)
    assert loaded["step"] == 5 and torch.equal(loaded["w"], torch.tensor([0.0, 1.0, 2.0]))
    path = ckpt.save_checkpoint(str(d), 1234, {"step": 1234})   # str directory works too
    assert path == d / "step_00001234.pt"
    assert (d / "latest").read_text() == "step_00001234.pt\n"
    assert _files(d) == ["latest", "step_00000005.pt", "step_00001234.pt"]


def test_save_prunes_to_keep_last_default_three(tmp_path):
    for step in (10, 20, 30, 40, 50):
        ckpt.save_checkpoint(tmp_path, step, {"step": step})
    assert _files(tmp_path) == ["latest", "step_00000030.pt", "step_00000040.pt",
                                "step_00000050.pt"]
    ckpt.save_checkpoint(tmp_path, 60, {"step": 60}, keep_last=1)
    assert _files(tmp_path) == ["latest", "step_00000060.pt"]
    for step in (70, 80):
        ckpt.save_checkpoint(tmp_path, step, {"step": step}, keep_last=2)
    assert _files(tmp_path) == ["latest", "step_00000070.pt", "step_00000080.pt"]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path)) == {"step": 80}


def test_pruning_tolerates_a_file_another_process_already_removed(tmp_path, monkeypatch):
    _touch_steps(tmp_path, 1, 2, 3)
    listed = ckpt.list_checkpoints

    def list_then_lose_oldest(d):
        found = listed(d)
        found[0].unlink()                 # pruned by a concurrent writer meanwhile
        return found

    monkeypatch.setattr(ckpt, "list_checkpoints", list_then_lose_oldest)
    ckpt.save_checkpoint(tmp_path, 4, {"step": 4}, keep_last=2)
    assert _files(tmp_path) == ["latest", "step_00000003.pt", "step_00000004.pt"]


def test_a_failed_save_leaves_the_previous_checkpoint_latest_and_no_temporaries(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"step": 1})
    with pytest.raises(Exception):
        ckpt.save_checkpoint(tmp_path, 2, {"fn": lambda: None})   # not picklable
    assert _files(tmp_path) == ["latest", "step_00000001.pt"]
    assert (tmp_path / "latest").read_text() == "step_00000001.pt\n"
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_00000001.pt"


def test_list_checkpoints_sorts_by_step_and_ignores_other_files(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "absent") == []
    assert ckpt.list_checkpoints(tmp_path) == []
    _touch_steps(tmp_path, 100, 2, 30)
    for name in ("latest", "step_2.pt", "step_000000030.pt", "step_00000004.pt.bak",
                 ".step_00000005.pt.abc.tmp", "xstep_00000006.pt", "step_0000000a.pt",
                 "step_00000007.PT"):
        (tmp_path / name).write_text("x")
    assert ckpt.list_checkpoints(str(tmp_path)) == [
        tmp_path / "step_00000002.pt", tmp_path / "step_00000030.pt",
        tmp_path / "step_00000100.pt"]


def test_latest_follows_the_pointer_else_the_highest_step(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "absent") is None
    assert ckpt.latest_checkpoint(tmp_path) is None
    (tmp_path / "latest").write_text("step_00000009.pt\n")     # pointer to nothing
    assert ckpt.latest_checkpoint(tmp_path) is None
    a, b, c = _touch_steps(tmp_path, 1, 2, 3)
    assert ckpt.latest_checkpoint(tmp_path) == c               # dangling pointer: the last
    (tmp_path / "latest").write_text("  step_00000002.pt \n")   # pointer wins, stripped
    assert ckpt.latest_checkpoint(str(tmp_path)) == b
    (tmp_path / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path) == c               # no pointer: the last
    c.unlink()
    assert ckpt.latest_checkpoint(tmp_path) == b


# --- load ----------------------------------------------------------------------------

def test_load_refuses_missing_truncated_empty_and_foreign_files_in_one_line(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(str(missing))
    assert str(e.value) == f"checkpoint not found: {missing}"
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(tmp_path)                       # a directory is no file
    assert str(e.value) == f"checkpoint not found: {tmp_path}"

    good = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.ones(64)})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(cut)
    msg = str(e.value)
    assert msg.startswith(f"cannot read checkpoint {cut}: RuntimeError: PytorchStreamReader "
                          "failed reading zip archive")
    assert "\n" not in msg

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(empty)
    assert str(e.value) == f"cannot read checkpoint {empty}: EOFError"

    foreign = tmp_path / "foreign.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, foreign)     # an arbitrary pickled object
    with pytest.raises(CheckpointError) as e:
        ckpt.load_checkpoint(foreign)
    assert str(e.value) == (f"cannot read checkpoint {foreign}: UnpicklingError: Unsupported "
                            "global: GLOBAL fractions.Fraction was not an allowed global by "
                            "default.")

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))     # pickle, not torch.save
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError) as e:
            ckpt.load_checkpoint(plain)
    assert str(e.value) == f"cannot read checkpoint {plain}: UnpicklingError: Unsupported operand 149"


def test_load_stays_weights_only_when_the_environment_relaxes_torchs_default(tmp_path, monkeypatch):
    # torch.load honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only where weights_only is not given
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": fractions.Fraction(1, 3)}, foreign)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="fractions.Fraction"):
            ckpt.load_checkpoint(foreign)


def _as_if_saved_on_cuda(payload: dict) -> bytes:
    """torch.save bytes of ``payload`` whose storages are tagged ``cuda:0`` (a GPU run's
    file), made on a CPU machine by rewriting the location string in data.pkl."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    src, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu") == len(payload)
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            dst.writestr(info.filename, data)
    return out.getvalue()


def test_a_checkpoint_written_on_gpu_loads_onto_the_cpu(tmp_path):
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(_as_if_saved_on_cuda({"w": torch.arange(4.0)}))
    loaded = ckpt.load_checkpoint(path)
    assert loaded["w"].device == torch.device("cpu")
    assert torch.equal(loaded["w"], torch.tensor([0.0, 1.0, 2.0, 3.0]))


# --- resume checks ---------------------------------------------------------------------

def test_check_state_compatible_lists_every_mismatch_without_resizing_tables():
    model = {"a": torch.zeros(2, 3), "b": torch.zeros(4),
             "t.relative_position_bias_table": torch.zeros(28, 2),   # grid 3
             "t.relative_position_index": torch.zeros(3)}
    same = {k: v.clone() for k, v in model.items()}
    assert ckpt.check_state_compatible(model, same) is None
    other = {"a": torch.zeros(3, 3), "c": torch.zeros(1),
             "t.relative_position_bias_table": torch.zeros(12, 2),   # grid 2: resizable on
             "t.relative_position_index": torch.zeros(5)}            # load, not on resume
    with pytest.raises(CheckpointError) as e:
        ckpt.check_state_compatible(model, other)
    assert str(e.value) == "\n".join([
        "checkpoint does not match the model architecture:",
        "  shape mismatches (2):",
        "    a: checkpoint (3, 3) vs model (2, 3)",
        "    t.relative_position_bias_table: checkpoint (12, 2) vs model (28, 2)",
        "  missing from checkpoint (1):",
        "    b",
        "  not in the model (1):",
        "    c"])
    with pytest.raises(CheckpointError) as e:
        ckpt.check_state_compatible(model, {"a": torch.zeros(2, 3)}, source="run/step_1.pt")
    assert str(e.value) == "\n".join([
        "run/step_1.pt does not match the model architecture:",
        "  missing from run/step_1.pt (2):",
        "    b",
        "    t.relative_position_bias_table"])


def test_find_resume_checkpoint(tmp_path):
    with pytest.raises(CheckpointError) as e:
        ckpt.find_resume_checkpoint(True, tmp_path)
    assert str(e.value) == f"--resume: no checkpoint in {tmp_path}"
    _, second = _touch_steps(tmp_path, 1, 2)
    assert ckpt.find_resume_checkpoint(True, tmp_path) == second
    given = tmp_path / "step_00000001.pt"
    assert ckpt.find_resume_checkpoint(str(given), tmp_path) == given
    with pytest.raises(CheckpointError, match="elsewhere.pt' does not exist"):
        ckpt.find_resume_checkpoint(tmp_path / "elsewhere.pt", tmp_path)
    # --resume takes the forms a user has: the latest pointer, the checkpoints directory
    (tmp_path / "latest").write_text("step_00000001.pt\n")
    assert ckpt.find_resume_checkpoint(str(tmp_path / "latest"), tmp_path) == given
    assert ckpt.find_resume_checkpoint(str(tmp_path), tmp_path) == given


def test_rank_rng_state_picks_this_ranks_entry_and_refuses_another_world_size():
    saved = [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    assert [ckpt.rank_rng_state(saved, r, 3, "x.pt") for r in range(3)] == saved
    with pytest.raises(CheckpointError) as e:
        ckpt.rank_rng_state(saved, 0, 2, "out/step_00000004.pt")
    assert str(e.value) == ("out/step_00000004.pt was written by 3 ranks; this run has 2. "
                            "Resume with the same number of processes.")
    with pytest.raises(CheckpointError, match="written by 3 ranks; this run has 4"):
        ckpt.rank_rng_state(saved, 3, 4, "x.pt")


# --- RNG state ---------------------------------------------------------------------------

def _stir():
    """Non-trivial RNG positions: numpy mid-key with a cached gaussian, python with one."""
    random.seed(11)
    random.random()
    random.gauss(0.0, 1.0)               # leaves gauss_next set
    np.random.seed(12)
    np.random.randn(3)                   # odd count: has_gauss = 1
    torch.manual_seed(13)
    torch.rand(5)


def _draws():
    return (random.random(), random.gauss(0.0, 1.0), random.randrange(10 ** 9),
            np.random.randn(3).tolist(), np.random.randint(0, 10 ** 9, 4).tolist(),
            np.random.random_sample(), torch.rand(6).tolist(), torch.randint(0, 10 ** 9, (3,)).tolist())


def test_rng_state_is_plain_tensors_and_values_matching_the_generators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _stir()
    py, np_state = random.getstate(), np.random.get_state()
    state = ckpt.rng_state()
    assert set(state) == {"python", "numpy", "torch"}
    version, internal, gauss = state["python"]
    assert (version, tuple(internal), gauss) == py and isinstance(internal, list)
    assert gauss is not None
    name, keys, pos, has_gauss, cached = state["numpy"]
    assert name == "MT19937" and keys.dtype == torch.int64 and keys.shape == (624,)
    assert np.array_equal(keys.numpy(), np_state[1].astype(np.int64))
    assert (pos, has_gauss, cached) == (np_state[2], 1, np_state[4]) and 0 < pos < 624
    assert type(pos) is int and type(has_gauss) is int and type(cached) is float
    assert torch.equal(state["torch"], torch.get_rng_state())


def test_rng_state_round_trips_through_a_checkpoint_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _stir()
    ckpt.save_checkpoint(tmp_path, 7, {"rng": [ckpt.rng_state()]})
    expected = _draws()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)      # somewhere else entirely
    assert _draws() != expected
    payload = ckpt.load_checkpoint(ckpt.find_resume_checkpoint(True, tmp_path))
    ckpt.set_rng_state(ckpt.rank_rng_state(payload["rng"], 0, 1, "step_00000007.pt"))
    assert _draws() == expected


def test_cuda_rng_state_is_saved_and_restored_only_where_cuda_is(monkeypatch):
    calls = []
    fake = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", calls.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    state = ckpt.rng_state()
    assert state["cuda"] is fake and set(state) == {"python", "numpy", "torch", "cuda"}
    ckpt.set_rng_state(state)
    assert calls == [fake]
    cpu_only = {k: v for k, v in state.items() if k != "cuda"}
    ckpt.set_rng_state(cpu_only)                     # a CPU run's state on a GPU machine
    assert calls == [fake]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ckpt.set_rng_state(state)                        # a GPU run's state on a CPU machine
    assert calls == [fake]
    assert "cuda" not in ckpt.rng_state()
