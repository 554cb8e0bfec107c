"""Size accounting shared by every compression: what the bytes were, what they are, what it cost."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class CompressionReport:
    """Bytes before/after and, given an eval function, the metric before/after."""

    name: str
    bytes_before: int
    bytes_after: int
    metric_before: float | None = None
    metric_after: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """How many times smaller (``bytes_before / bytes_after``)."""
        return self.bytes_before / max(self.bytes_after, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def state_dict_bytes(model: nn.Module) -> int:
    """Serialized size of the model's state_dict (what a checkpoint or FL message carries)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def pack_sparse(state: dict[str, torch.Tensor]) -> bytes:
    """Float tensors as one 1-bit nonzero mask + their nonzero values; others dense (npz).

    This is what makes pruning pay off on disk: zeros cost one bit instead of four bytes. All
    float tensors share one mask and one value array per dtype, so a model with hundreds of
    small tensors does not pay hundreds of npz entry headers.
    """
    names, dtypes, ndims, dims, masks = [], [], [], [], []
    values: dict[str, list[np.ndarray]] = {}
    dense: dict[str, np.ndarray] = {}
    for i, (name, t) in enumerate(state.items()):
        t = t.detach().cpu()
        names.append(name)
        dtypes.append(str(t.dtype).removeprefix("torch."))
        ndims.append(t.dim())
        dims.extend(t.shape)
        if t.is_floating_point():
            a = (t.float() if t.dtype == torch.bfloat16 else t).numpy().reshape(-1)
            masks.append(a != 0)
            values.setdefault(str(a.dtype), []).append(a[a != 0])
        else:
            dense[f"dense.{i}"] = t.numpy()
    arrays = {
        "names": np.array(names, dtype=str),
        "dtypes": np.array(dtypes, dtype=str),
        "ndims": np.array(ndims, dtype=np.int64),
        "dims": np.array(dims, dtype=np.int64),
        "mask": np.packbits(np.concatenate(masks)) if masks else np.zeros(0, np.uint8),
        **{f"values.{k}": np.concatenate(v) for k, v in values.items()},
        **dense,
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def unpack_sparse(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_sparse`."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    dims, mask = arrays["dims"].tolist(), np.unpackbits(arrays["mask"]).astype(bool)
    out: dict[str, torch.Tensor] = {}
    dpos, mpos = 0, 0
    vpos: dict[str, int] = {}
    for i, (name, dtype, ndim) in enumerate(
        zip(
            arrays["names"].tolist(),
            arrays["dtypes"].tolist(),
            arrays["ndims"].tolist(),
            strict=True,
        )
    ):
        shape = tuple(dims[dpos : dpos + ndim])
        dpos += ndim
        if f"dense.{i}" in arrays:
            out[name] = torch.from_numpy(arrays[f"dense.{i}"].copy())
            continue
        n = int(np.prod(shape))
        m = mask[mpos : mpos + n]
        mpos += n
        key = "float32" if dtype == "bfloat16" else dtype
        start = vpos.get(key, 0)
        vpos[key] = start + int(m.sum())
        flat = np.zeros(n, dtype=key)
        flat[m] = arrays[f"values.{key}"][start : vpos[key]]
        out[name] = torch.from_numpy(flat.reshape(shape)).to(getattr(torch, dtype))
    return out
