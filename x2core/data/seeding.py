"""Seeds derived from names and numbers, the same in every process and worker."""
from __future__ import annotations

import hashlib
import random
from typing import Any


def sample_rng(seed: int, epoch: int, index: int, salt: str = "") -> random.Random:
    """The generator of one sample: a function of ``(seed, epoch, index)`` only.

    String seeds are hashed with SHA-512 by ``random.Random``, independent of
    ``PYTHONHASHSEED``, so every process derives the same stream.
    """
    return random.Random(f"x2vlm{salt}:{int(seed)}:{int(epoch)}:{int(index)}")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (blake2b of their joined ``str``)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
