"""The one place that makes the randomness a DP guarantee rests on.

Two draws protect a DP-SGD release and both must stay secret from everyone but the process that
makes them: the Gaussian noise, and the Poisson sample (amplification by subsampling assumes the
adversary does not know which records a step used). Run seeds are public (they sit in the config
and in the MLflow params), so they keep model initialisation, data order and augmentation
reproducible and never reach a generator made here. Central DP's noise is the same: it is drawn
inside the coordinator from OS entropy, never from ``np.random``.

* :func:`torch_generator`: a ``torch.Generator`` whose state comes from ``os.urandom``. On CPU
  torch's Mersenne Twister keeps only the low 32 bits of ``manual_seed`` (seeds that differ above
  bit 31 give the same stream), so a seeded generator could be found by trying 2^32 seeds; all
  624 state words are written from OS entropy instead. On an accelerator, Philox takes a 64-bit
  seed from OS entropy.
* :func:`numpy_generator`: numpy's Philox keyed by 128 bits of OS entropy (central DP).
* :func:`protect`: puts an Opacus DP optimizer and its Poisson loader on two separate such
  generators and turns on the optimizer's floating-point defence: every noise tensor is the sum
  of four Gaussian draws halved (Holohan & Braghin 2021, section 5.1), which has the same
  distribution but whose low-order bits no longer betray the draw. Opacus ties that defence to
  ``PrivacyEngine(secure_mode=True)``, which also requires ``torchcsprng`` (no release for this
  torch); the optimizer reads its own ``secure_mode`` only to choose that construction, so the
  engine stays in its default mode and the optimizer gets the flag.
* :func:`gaussian`: the same four-draw construction for central DP's numpy noise.

Neither generator is a cryptographic RNG, which is why Opacus' "Secure RNG turned off" warning
stays visible. Their state is never observed on its own (only summed with clipped gradients) and
never written to a checkpoint; replaying it would need the 19937-bit (CPU) or 64-bit state.

Tests that need reproducible noise set ``VEILFED_INSECURE_NOISE_SEED`` (a non-negative integer):
every generator is then derived from it (and, for torch, from the global seed the caller set),
with a WARNING each time. No shipped config, deployment or demo sets it.
"""

from __future__ import annotations

import logging
import os
import secrets
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from veilfed.errors import UsageError

log = logging.getLogger(__name__)

INSECURE_SEED_ENV = "VEILFED_INSECURE_NOISE_SEED"

# torch's serialized CPU generator state (CPUGeneratorImplState): the initial seed (u64), left
# (i32), seeded (i32), next (u64), then the 624 Mersenne Twister words, each stored as a u64.
_MT_WORDS = 624
_MT_OFFSET = 24
_MT_END = _MT_OFFSET + 8 * _MT_WORDS


def insecure_seed() -> int | None:
    """The test-only seed from ``VEILFED_INSECURE_NOISE_SEED``, or None (the normal case)."""
    raw = os.environ.get(INSECURE_SEED_ENV, "").strip()
    if not raw:
        return None
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if seed < 0:
        raise UsageError(
            f"{INSECURE_SEED_ENV}={raw!r}: expected a non-negative integer; unset it outside tests"
        )
    return seed


def _insecure(stream: str, seed: int, context: Sequence[int]) -> np.random.SeedSequence:
    log.warning(
        "%s is set: %s is reproducible from it and protects nothing (tests only)",
        INSECURE_SEED_ENV,
        stream,
    )
    return np.random.SeedSequence([seed, zlib.crc32(stream.encode()), *context])


def _check_layout() -> None:
    probe = torch.Generator().manual_seed(0x5EED).get_state().numpy()
    first_word = int(np.frombuffer(probe[_MT_OFFSET : _MT_OFFSET + 8].tobytes(), "<u8")[0])
    if probe.size < _MT_END or first_word != 0x5EED:
        raise RuntimeError(
            f"torch {torch.__version__}: unexpected CPU generator state layout; "
            "cannot seed the DP noise from OS entropy"
        )


def _fill_from_os(gen: torch.Generator) -> None:
    _check_layout()
    state = gen.get_state().clone()
    raw = state.numpy()
    words = np.frombuffer(os.urandom(4 * _MT_WORDS), "<u4").astype("<u8")
    raw[_MT_OFFSET:_MT_END] = np.frombuffer(words.tobytes(), np.uint8)
    raw[0:8] = np.frombuffer(os.urandom(8), np.uint8)  # initial_seed(): meaningless, not a seed
    gen.set_state(state)
    if not torch.equal(gen.get_state()[_MT_OFFSET:_MT_END], state[_MT_OFFSET:_MT_END]):
        raise RuntimeError("torch rejected the OS-entropy generator state")


def torch_generator(stream: str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator for ``stream`` (e.g. "DP-SGD noise") that no run seed can replay."""
    gen = torch.Generator(device=device)
    seed = insecure_seed()
    if seed is not None:
        ss = _insecure(stream, seed, [torch.initial_seed()])
        return gen.manual_seed(int(ss.generate_state(1, np.uint64)[0]))
    if gen.device.type == "cpu":
        _fill_from_os(gen)
    else:
        gen.manual_seed(secrets.randbits(64))
    return gen


def numpy_generator(stream: str, context: Sequence[int] = ()) -> np.random.Generator:
    """A numpy generator for ``stream`` from 128 bits of OS entropy; ``context`` (non-negative
    ints, e.g. the round) only separates the streams of the test-only insecure mode."""
    seed = insecure_seed()
    ss = np.random.SeedSequence() if seed is None else _insecure(stream, seed, context)
    return np.random.Generator(np.random.Philox(ss))


def gaussian(
    rng: np.random.Generator, std: float, shape: tuple[int, ...], dtype: Any = np.float64
) -> np.ndarray:
    """N(0, std²) noise of ``shape`` as half the sum of four draws (see the module docstring)."""
    if std == 0:
        return np.zeros(shape, dtype=dtype)
    total = rng.normal(0.0, std, shape)
    for _ in range(3):
        total += rng.normal(0.0, std, shape)
    return (total / 2).astype(dtype, copy=False)


def protect(optimizer: Any, loader: Any) -> None:
    """Put an Opacus DP optimizer's noise and its Poisson loader's sampling on two separate
    OS-entropy generators, with the four-draw noise construction.

    ``loader`` may be any loader; only Opacus' Poisson sampler is switched (a plain loader's
    shuffling is not part of the guarantee and stays on the seeded global generator).
    """
    from opacus.optimizers import DPOptimizer
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    if not isinstance(optimizer, DPOptimizer):
        raise TypeError(f"protect: expected an Opacus DPOptimizer, got {type(optimizer).__name__}")
    device = next((p.device for p in optimizer.params), torch.device("cpu"))
    optimizer.generator = torch_generator("DP-SGD noise", device)
    optimizer.secure_mode = True
    sampler = getattr(loader, "batch_sampler", None)
    if isinstance(sampler, UniformWithReplacementSampler):
        sampler.generator = torch_generator("Poisson sampling")
