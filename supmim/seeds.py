"""Derived randomness: every seed of a run is a hash of the run's seed and a position.

Data order, each sample's augmentation, each micro-step's dropout / drop-path / mixup and
MIM branch, each sample's mask and the decoder's initialisation all come from here, never
from how much random state happened to be consumed before. That makes a run resumable at
any step, independent of data-loader workers and of the process (rank) a sample lands on,
and keeps the MIM branch from disturbing the supervised one (lambda = 0 is the baseline
bit for bit).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

_MASK64 = (1 << 63) - 1
# Stream tags: a stream's seed is mix_seed(seed, <positions>, TAG); distinct tags keep the
# streams unrelated even at equal positions.
_STEP_TAG = 0x57E9  # dropout, drop-path, mixup of one optimizer step
_MIM_TAG = 0x313  # the MIM branch of one step (its drop-path), on a forked generator
_INIT_TAG = 0xDEC  # the MIM decoder's initialisation, on a forked generator


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, so that nearby tuples give unrelated seeds."""
    seq = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFF for p in parts])
    return int.from_bytes(seq.generate_state(2, dtype=np.uint32).tobytes(), "little") & _MASK64


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class StepSeeds:
    """The seeds of one optimizer step: ``global_`` for the global generators (the
    supervised branch's dropout and drop-path, mixup), ``mim`` for the MIM branch."""

    global_: int
    mim: int


def step_seeds(seed: int, step: int, rank: int = 0, micro: int = 0) -> StepSeeds:
    """Seeds of micro-step ``micro`` of optimizer step ``step`` (0-based, counted over the
    whole run) on ``rank``. Micro-step 0 has the seeds of an unaccumulated step, so runs
    with ``train.accum_steps=1`` draw what they always drew."""
    extra = (micro,) if micro else ()
    return StepSeeds(global_=mix_seed(seed, step, _STEP_TAG, rank, *extra),
                     mim=mix_seed(seed, step, _MIM_TAG, rank, *extra))


def decoder_init_seed(seed: int) -> int:
    """Seed of the MIM decoder's (and [MASK] token's) initialisation."""
    return mix_seed(seed, _INIT_TAG)


def mask_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s mask in ``epoch``: the same mask whatever the
    batch, worker or process it is drawn in."""
    return np.random.default_rng([seed, epoch, int(index)])


def sample_seed(base: int, position: int) -> int:
    """Seed of the sample at ``position`` of an epoch whose base seed is ``base``."""
    return (base + position * 0x9E3779B97F4A7C15) & _MASK64


class SeededSample:
    """Run code with the global RNGs seeded from ``seed``, restoring their state afterwards,
    so a sample's augmentation depends only on its own seed (and leaves the caller's streams
    untouched when loading happens in the main process)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        seed = self.seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)  # CPU only: transforms run on CPU

    def __exit__(self, *exc: object) -> None:
        py, npy, th = self._state
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


# Counter-based randomness for batched, on-device draws (the device-resident loader, the
# token cache's view choice): a value is a hash of (key, counters), so a draw needs no
# generator state and is the same whichever batch, process or device computes it.
_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # a 27-bit odd multiplier: 32-bit value x 27-bit constant < 2^63, no overflow


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on an int64 tensor holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    return x ^ (x >> 16)


def counter_hash(key: int, *counters: torch.Tensor | int) -> torch.Tensor:
    """int64 values in [0, 2^32), elementwise over the broadcast ``counters`` (int tensors,
    values below 2^32): a hash of the 63-bit ``key`` and the counters, on the counters'
    device. Used as ``uniform``/``below``; distinct keys give unrelated streams."""
    ref = next((c for c in counters if isinstance(c, torch.Tensor)), None)
    device = ref.device if ref is not None else None
    h = _fmix32(torch.tensor((key >> 32) & _M32, dtype=torch.int64, device=device))
    h = _fmix32(h ^ (key & _M32))
    for c in counters:
        c = torch.as_tensor(c, dtype=torch.int64, device=device)
        h = _fmix32(((h ^ (c & _M32)) + 0x9E3779B9) & _M32)
    return h


def uniform(key: int, *counters: torch.Tensor | int) -> torch.Tensor:
    """float32 in [0, 1) from :func:`counter_hash` (24 random bits, exact in float32)."""
    return (counter_hash(key, *counters) >> 8).float() * (1.0 / (1 << 24))


def below(n: int, key: int, *counters: torch.Tensor | int) -> torch.Tensor:
    """int64 in [0, n) from :func:`counter_hash` (multiply-shift; ``n`` < 2^31)."""
    if not 0 < n < 1 << 31:
        raise ValueError(f"below() needs 0 < n < 2^31, got {n}")
    return (counter_hash(key, *counters) * n) >> 32
