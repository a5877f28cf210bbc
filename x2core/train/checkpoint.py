"""Atomic training checkpoints: write to a temporary file, fsync, rename.

A checkpoint directory holds ``step_00000100.pt`` files and ``latest``, a one-line
pointer rewritten atomically after each save, so a crash at any moment leaves the
previous checkpoint intact and ``latest`` naming a complete file. Files are loaded
with ``torch.load(weights_only=True)``: every value saved here is a tensor or a
plain Python container, never an arbitrary pickled object.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from x2core.errors import CheckpointError
from x2core.utils.atomic import atomic_write, remove_temporaries

_NAME = re.compile(r"^step_(\d{8})\.pt$")


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, payload: dict, keep_last: int = 3) -> Path:
    """Write ``payload`` as ``step_{step}.pt``, point ``latest`` at it, prune old ones."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"step_{step:08d}.pt"
    atomic_write(path, lambda fh: torch.save(payload, fh))
    atomic_write(ckpt_dir / "latest", path.name + "\n")
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Delete the half-written ``.step_*.pt.*.tmp`` / ``.latest.*.tmp`` files that a run
    killed while saving left in ``ckpt_dir`` (complete checkpoints are never touched).
    Runs call it once at their start, on rank 0, before anything saves (``best.pt``: the
    fine-tune runner's best epoch, :mod:`x2core.train.best_checkpoint`)."""
    return remove_temporaries(ckpt_dir, rf"{_NAME.pattern[1:-1]}|latest|best\.pt")


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest"
    if pointer.is_file():
        path = ckpt_dir / pointer.read_text().strip()
        if path.is_file():
            return path
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None


def _load_failure(exc: Exception) -> str:
    """``"Type: reason"`` of a failed torch.load, in one line. Its weights_only refusal is
    paragraphs of advice (with ANSI escapes) around a ``WeightsUnpickler error:`` reason,
    followed by advice to allow-list the global, which this loader never does."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.partition(marker)[2].split(" Please use ")[0]
        text = text.split(" Check the documentation")[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_state_compatible(model_state: dict, ckpt_state: dict, *, source: str = "checkpoint") -> None:
    """Refuse to resume from a checkpoint of another architecture, listing what does not fit."""
    from x2core.model.loading import compare_state

    compare_state(model_state, ckpt_state, source=source, exact_shapes=True).raise_for_problems(
        header=f"{source} does not match the model architecture:")


def find_resume_checkpoint(resume: "str | os.PathLike | bool", ckpt_dir: "str | os.PathLike") -> Path:
    """``--resume`` (True: the latest in ``ckpt_dir``; else a path) -> the checkpoint to load."""
    if resume is True:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir}")
        return path
    from x2core.model.artifact import checkpoint_file  # a run dir, latest pointer or .pt
    path = checkpoint_file(resume)
    if path is None:
        raise CheckpointError(f"--resume: '{resume}' is a model directory; a run resumes from "
                              "its checkpoint (use init_from= to start a new run from it)")
    return path


def rank_rng_state(saved: list, rank: int, world_size: int, source: str) -> dict:
    """This rank's entry of a checkpoint's per-rank RNG list, refusing another world size."""
    if len(saved) != world_size:
        raise CheckpointError(f"{source} was written by {len(saved)} ranks; this run has "
                              f"{world_size}. Resume with the same number of processes.")
    return saved[rank]


# --- RNG state as plain tensors (weights_only-loadable) ----------------------------

def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
