"""Compressed plaintext updates: what a client sends instead of its whole model, and back.

Both apps call this module; the settings are ``[federated]`` fields (``FederatedConfig``).

- ``update_compression = "none"`` (default): a train reply's arrays are the whole weights.
- Otherwise the client sends :func:`encode`: the floating-point tensors of its release as a
  delta from the global model it received (keys sorted), encoded by the named update compressor
  of ``veilfed.compress`` (``topk``/``randk`` keep ``update_fraction`` of the coordinates, with
  error feedback; ``int8_update`` sends 8-bit codes with scale ``update_scale``, or one scale per
  tensor when it is 0), and any other tensor (integer buffers) whole as ``raw/<key>``.
- ``randk``'s coordinates are a function of (run seed, round): every client of a round and the
  coordinator derive the same ones, and no indices travel.
- The coordinator calls :func:`decode` against the global model it sent and gets whole weights
  back, so screening, the norm bound and every strategy see what they see without compression.
  ``decode`` trusts nothing: a payload whose fields, sizes, indices, codes or scales do not fit
  the global model and the run's settings raises ``CheckFailed`` naming what is wrong, and the
  coordinator rejects that update.

Compression runs on the released (clipped and noised) update, so it is post-processing and costs
no privacy budget. Under ``[he]`` it is refused at config load: the coordinator sums ciphertexts
of whole weights (``HEConfig.check_compatible``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from veilfed.compress.registry import Payload, UpdateCompressor
from veilfed.compress.updates import Int8Update, RandK, TopK, layout
from veilfed.errors import CheckFailed
from veilfed.federation.sections import UPDATE_COMPRESSIONS, FederatedConfig

RAW_PREFIX = "raw/"


def float_keys(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The tensors that travel as a compressed delta, in wire order."""
    return sorted(k for k, a in arrays.items() if np.issubdtype(np.asarray(a).dtype, np.floating))


def round_seed(seed: int, rnd: int) -> int:
    """The round's shared ``randk`` seed, derived by clients and coordinator alike."""
    return int(np.random.SeedSequence([seed, rnd, 0x72616E64]).generate_state(1)[0])


def for_round(fed: FederatedConfig, seed: int, rnd: int) -> UpdateCompressor | None:
    """A fresh compressor for round ``rnd`` (None without compression); a client restores its
    error-feedback residual into it."""
    method = fed.update_compression
    if method == "none":
        return None
    if method == "topk":
        return TopK(fraction=fed.update_fraction, error_feedback=True)
    if method == "randk":
        seed = round_seed(seed, rnd)
        return RandK(fraction=fed.update_fraction, seed=seed, error_feedback=True)
    if method == "int8_update":
        return Int8Update(scale=fed.update_scale or None)
    raise CheckFailed(f"update compression {method!r}: use one of {', '.join(UPDATE_COMPRESSIONS)}")


def encode(
    codec: UpdateCompressor, start: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray]
) -> Payload:
    """The wire payload of ``trained`` given the global model ``start`` it was trained from."""
    keys = float_keys(start)
    delta = [np.asarray(trained[k], np.float32) - np.asarray(start[k], np.float32) for k in keys]
    payload = dict(codec.compress(delta))
    for key in start:
        if key not in keys:
            payload[RAW_PREFIX + key] = np.asarray(trained[key])
    return payload


def _fail(what: str) -> CheckFailed:
    return CheckFailed(f"compressed update: {what}")


def _expect(payload: Payload, name: str, dtype: type, size: int) -> np.ndarray:
    value = payload.get(name)
    if value is None:
        raise _fail(f"missing field {name!r}")
    value = np.asarray(value)
    if value.dtype != np.dtype(dtype) or value.shape != (size,):
        raise _fail(f"field {name!r} must be {size} values of {np.dtype(dtype)}")
    return value


def decode(
    codec: UpdateCompressor, payload: Payload, reference: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Whole weights from a client's payload and the global model ``reference`` it was sent."""
    keys = float_keys(reference)
    tensors = [np.asarray(reference[k], np.float32) for k in keys]
    size = sum(t.size for t in tensors)
    expected = layout(tensors)  # what encode's compressor wrote for these tensors
    fields = set(expected)
    for name, want in expected.items():
        got = payload.get(name)
        if got is None or got.shape != want.shape or not np.array_equal(got, want):
            raise _fail(f"field {name!r} does not describe the global model's tensors")
    if isinstance(codec, TopK | RandK):
        k = max(1, math.ceil(codec.fraction * size))
        fields |= {"size", "values"}
        if int(_expect(payload, "size", np.int64, 1)[0]) != size:
            raise _fail(f"field 'size' must be {size}")
        values = _expect(payload, "values", np.float32, k)
        if isinstance(codec, TopK):
            fields.add("indices")
            idx = _expect(payload, "indices", np.uint32, k).astype(np.int64)
            if idx.size and (idx[-1] >= size or np.any(np.diff(idx) <= 0)):
                raise _fail(f"'indices' must increase strictly and stay below {size}")
    elif isinstance(codec, Int8Update):
        fields.add("scales")
        for i, t in enumerate(tensors):
            fields.add(f"q.{i}")
            q = payload.get(f"q.{i}")
            if q is None or q.dtype != np.int8 or q.shape != t.shape or np.any(q == -128):
                raise _fail(f"field 'q.{i}' must be int8 codes in [-127, 127] shaped {t.shape}")
        scales = _expect(payload, "scales", np.float32, len(tensors))
        if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise _fail("'scales' must be finite and > 0")
        if codec.scale is not None and np.any(scales != np.float32(codec.scale)):
            raise _fail(f"'scales' must all be the run's shared scale {codec.scale:g}")
        values = scales
    else:
        raise _fail(f"no decoder for {type(codec).__name__}")
    if not np.all(np.isfinite(values)):
        raise _fail("non-finite values (NaN/Inf)")
    raw = {k for k in reference if k not in keys}
    fields |= {RAW_PREFIX + k for k in raw}
    extra = sorted(set(payload) - fields)
    missing = sorted(fields - set(payload))
    if extra or missing:
        what = f"unexpected field {extra[0]!r}" if extra else f"missing field {missing[0]!r}"
        raise _fail(what)
    delta = codec.decompress(payload)
    out = {
        k: (t + d).astype(reference[k].dtype) for k, t, d in zip(keys, tensors, delta, strict=True)
    }
    for key in raw:
        out[key] = np.asarray(payload[RAW_PREFIX + key])
    return {k: out[k] for k in reference}
