"""Compression of federated model updates (``list[np.ndarray]`` -> dict of arrays and back).

Payloads are ``dict[str, np.ndarray]`` so they drop straight into a Flower ``ArrayRecord``.
Secure aggregation sums ciphertexts, so a compressor composes with CKKS only if the sum of the
clients' *encoded* messages decodes to the sum of their updates: see the package docstring.
"""

from __future__ import annotations

import math

import numpy as np

from veilfed.compress.registry import COMPRESSIONS, Payload, Update, UpdateCompressor
from veilfed.errors import UsageError


def layout(update: Update) -> Payload:
    """Shapes and dtypes so the flat payload can be cut back into the original arrays."""
    return {
        "ndims": np.array([a.ndim for a in update], dtype=np.int64),
        "dims": np.array([d for a in update for d in a.shape], dtype=np.int64),
        "dtypes": np.array([str(np.asarray(a).dtype) for a in update]),
    }


def _split(flat: np.ndarray, payload: Payload) -> Update:
    out, pos, dpos = [], 0, 0
    for ndim, dtype in zip(payload["ndims"].tolist(), payload["dtypes"].tolist(), strict=True):
        shape = tuple(payload["dims"][dpos : dpos + ndim].tolist())
        dpos += ndim
        n = math.prod(shape)
        out.append(flat[pos : pos + n].reshape(shape).astype(dtype))
        pos += n
    return out


def _flatten(update: Update) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in update])


def _check_fraction(name: str, fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"compression {name}: fraction={fraction} must be in (0, 1]")


class _Sparsifier(UpdateCompressor):
    """Keeps ``fraction`` of the coordinates; with error feedback the rest is carried over.

    ``residual`` (flat float32, or None) is what error feedback carries into the next call; a
    caller whose compressor does not live between rounds saves and restores it.
    """

    def __init__(self, fraction: float, error_feedback: bool) -> None:
        _check_fraction(self.name, fraction)
        self.fraction, self.error_feedback = fraction, error_feedback
        self.residual: np.ndarray | None = None

    def _select(self, flat: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def _sparsify(self, update: Update) -> tuple[np.ndarray, np.ndarray, Payload]:
        flat = _flatten(update)
        if self.error_feedback and self.residual is not None:
            if self.residual.shape != flat.shape:
                raise UsageError(
                    f"compression {self.name}: update size changed "
                    f"({self.residual.size} -> {flat.size}); use a new compressor"
                )
            flat = flat + self.residual
        k = max(1, math.ceil(self.fraction * flat.size))
        idx = np.sort(self._select(flat, k))
        if self.error_feedback:
            self.residual = flat.copy()
            self.residual[idx] = 0
        return idx, flat[idx], {**layout(update), "size": np.array([flat.size], dtype=np.int64)}

    def _densify(self, idx: np.ndarray, values: np.ndarray, payload: Payload) -> Update:
        flat = np.zeros(int(payload["size"][0]), dtype=np.float32)
        flat[idx] = values
        return _split(flat, payload)


@COMPRESSIONS.register("topk")
class TopK(_Sparsifier):
    """Send the ``fraction`` largest-magnitude coordinates (global over layers) + their indices.

    Not summable under CKKS: each client picks different indices.
    """

    name = "topk"

    def __init__(self, fraction: float = 0.01, error_feedback: bool = True) -> None:
        super().__init__(fraction, error_feedback)

    def _select(self, flat: np.ndarray, k: int) -> np.ndarray:
        return np.argpartition(-np.abs(flat), k - 1)[:k]

    def compress(self, update: Update) -> Payload:
        idx, values, payload = self._sparsify(update)
        return {**payload, "indices": idx.astype(np.uint32), "values": values.astype(np.float32)}

    def decompress(self, payload: Payload) -> Update:
        return self._densify(payload["indices"].astype(np.int64), payload["values"], payload)


@COMPRESSIONS.register("randk")
class RandK(_Sparsifier):
    """Send ``fraction`` of the coordinates chosen by a seed shared by all clients of a round.

    No indices travel (they are re-derived from ``seed``), and every client fills the same slots,
    so the values vector *is* summable under CKKS. Build it with the round's seed.
    """

    name = "randk"

    def __init__(self, fraction: float = 0.01, seed: int = 0, error_feedback: bool = True) -> None:
        super().__init__(fraction, error_feedback)
        self.seed = seed

    def _select(self, flat: np.ndarray, k: int) -> np.ndarray:
        return np.random.default_rng(self.seed).choice(flat.size, size=k, replace=False)

    def compress(self, update: Update) -> Payload:
        _, values, payload = self._sparsify(update)
        return {**payload, "values": values.astype(np.float32)}

    def decompress(self, payload: Payload) -> Update:
        size = int(payload["size"][0])
        k = max(1, math.ceil(self.fraction * size))
        idx = np.sort(np.random.default_rng(self.seed).choice(size, size=k, replace=False))
        return self._densify(idx, payload["values"], payload)


@COMPRESSIONS.register("int8_update")
class Int8Update(UpdateCompressor):
    """8-bit symmetric quantisation with unbiased stochastic rounding.

    With ``scale=None`` each tensor gets its own scale ``max|x| / 127`` (smallest error, not
    summable under CKKS). With a shared ``scale`` (agreed in the round config) values are
    clipped to ``±127 * scale`` and the integer codes of all clients add up: the aggregate
    decodes as ``scale * sum(codes)``, so it composes with CKKS summation. Size the scale to the
    per-coordinate range of the updates (e.g. a high quantile of ``|update|`` seen in earlier
    rounds, divided by 127), not to an L2 norm bound: coordinates are ~``norm / sqrt(d)``, and a
    scale that coarse rounds most of them to 0 (unbiased, but with large variance).
    """

    name = "int8_update"

    def __init__(
        self, scale: float | None = None, stochastic: bool = True, seed: int | None = None
    ) -> None:
        if scale is not None and scale <= 0:
            raise UsageError(f"compression int8_update: scale={scale} must be > 0")
        self.scale, self.stochastic = scale, stochastic
        self._rng = np.random.default_rng(seed)

    def compress(self, update: Update) -> Payload:
        payload: Payload = layout(update)
        scales = []
        for i, a in enumerate(update):
            x = np.asarray(a, dtype=np.float64)
            s = self.scale or (float(np.abs(x).max()) / 127 if x.size else 0.0) or 1.0
            y = np.clip(x / s, -127, 127)
            noise = self._rng.random(y.shape) if self.stochastic else 0.5
            payload[f"q.{i}"] = np.floor(y + noise).clip(-127, 127).astype(np.int8)
            scales.append(s)
        payload["scales"] = np.array(scales, dtype=np.float32)
        return payload

    def decompress(self, payload: Payload) -> Update:
        dtypes = payload["dtypes"].tolist()
        return [
            (payload[f"q.{i}"].astype(np.float32) * payload["scales"][i]).astype(dtypes[i])
            for i in range(len(dtypes))
        ]
