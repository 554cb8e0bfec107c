"""Encrypted-store loader vs plaintext loader: clips/s ratio on the same clips in the same run.

Both loaders are ``ClipDataset`` + ``DataLoader`` (same workers, same decode); one reads MP4 +
sidecar files (``DirectorySource``), the other decrypts Fernet tokens from ``EncryptedStore`` in
memory. Epochs alternate between the two (persistent workers) so machine noise hits both alike;
``loader_ratio`` is the median of adjacent-epoch ratios. Because shared machines are noisy, two
paired figures back it up: ``paired_worker_ratio`` (the same sample from both sources back to back
inside the DataLoader workers) and ``getitem_cpu_ratio`` (CPU time per sample). Also reported:
per-clip read cost without decoding, raw-token decrypt vs standard base64 ``Fernet.decrypt`` of
the same clip, and disk overhead.

    python experiments/bench/store.py [--quick] [--clips N] [--workers W]

Target: ``loader_ratio`` >= 0.9. The last line is a JSON object of the headline figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from cryptography.fernet import Fernet

from veilfed.crypto.keys import FernetKey, armor
from veilfed.data import synth
from veilfed.data.dataset import ClipDataset, collate
from veilfed.data.files import DirectorySource, write_world
from veilfed.data.store import EncryptedStore


def _epoch(loader: torch.utils.data.DataLoader) -> float:
    start = time.perf_counter()
    n = sum(len(batch["clip_id"]) for batch in loader)
    return n / (time.perf_counter() - start)


class _Paired(torch.utils.data.Dataset):
    """Sample i of both datasets back to back inside a worker; returns both wall times."""

    def __init__(self, plain: ClipDataset, store: ClipDataset) -> None:
        self.plain, self.store = plain, store

    def __len__(self) -> int:
        return len(self.plain)

    def __getitem__(self, i: int) -> tuple[float, float]:
        times = []
        for ds in (self.plain, self.store) if i % 2 else (self.store, self.plain):
            t = time.perf_counter()
            ds[i]
            times.append(time.perf_counter() - t)
        return (times[0], times[1]) if i % 2 else (times[1], times[0])


def _per_read_ms(source, ids: list[str], repeats: int) -> float:  # noqa: ANN001 - any ClipSource
    start = time.perf_counter()
    for _ in range(repeats):
        for cid in ids:
            source.read(cid)
    return (time.perf_counter() - start) / (repeats * len(ids)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per loader")
    args = parser.parse_args()
    clips = args.clips or (32 if args.quick else 128)
    epochs = args.epochs or (7 if args.quick else 9)
    cfg = synth.WorldConfig(seed=11)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_world(cfg, clips, root / "plain")
        plain = DirectorySource(root / "plain")
        key = FernetKey.generate()
        store = EncryptedStore.create(root / "store", key)
        store.put_many((cid, *plain.read(cid)) for cid in plain.ids())
        store = EncryptedStore.open(root / "store", key)
        assert store.ids() == sorted(plain.ids())

        def loader(source) -> torch.utils.data.DataLoader:  # noqa: ANN001
            ds = ClipDataset(source, cfg, ids=sorted(plain.ids()))
            return torch.utils.data.DataLoader(
                ds,
                batch_size=8,
                num_workers=args.workers,
                collate_fn=collate,
                persistent_workers=args.workers > 0,
            )

        loaders = {"plain": loader(plain), "store": loader(store)}
        for ld in loaders.values():  # warm up workers and page cache
            _epoch(ld)
        rates: dict[str, list[float]] = {"plain": [], "store": []}
        for i in range(epochs):
            order = ("plain", "store") if i % 2 == 0 else ("store", "plain")
            for name in order:
                rates[name].append(_epoch(loaders[name]))
        plain_rate = statistics.median(rates["plain"])
        store_rate = statistics.median(rates["store"])
        # adjacent epochs share the machine's load at that moment: median of per-pair ratios
        ratio = statistics.median(
            s / p for s, p in zip(rates["store"], rates["plain"], strict=True)
        )

        # the same sample from both sources back to back in the DataLoader workers
        paired = torch.utils.data.DataLoader(
            _Paired(loaders["plain"].dataset, loaders["store"].dataset),
            batch_size=None,
            num_workers=args.workers,
        )
        pairs = [pair for _ in range(2) for pair in paired]
        worker_ratio = sum(p for p, _ in pairs) / sum(s for _, s in pairs)

        # CPU time per sample in this process, clip by clip alternating: robust to other load
        ds_plain, ds_store = loaders["plain"].dataset, loaders["store"].dataset
        cpu = {"plain": 0.0, "store": 0.0}
        for i in range(len(ds_plain)):
            for name, ds in (("plain", ds_plain), ("store", ds_store)):
                t = time.process_time()
                ds[i]
                cpu[name] += time.process_time() - t

        ids = store.ids()
        plain_ms = _per_read_ms(plain, ids, 3)
        store_ms = _per_read_ms(store, ids, 3)
        data = plain.read(ids[0])[0]
        raw_token, std_token = key.encrypt(data), armor(key.encrypt(data))
        fernet = Fernet(key.secret())
        reps = 200
        t0 = time.perf_counter()
        for _ in range(reps):
            key.decrypt(raw_token)
        t1 = time.perf_counter()
        for _ in range(reps):
            fernet.decrypt(std_token)
        t2 = time.perf_counter()
        plain_bytes = sum((root / "plain" / f"{c}.mp4").stat().st_size for c in ids)
        store_bytes = sum(p.stat().st_size for p in (root / "store" / "clips").iterdir())

    result = {
        "bench": "store",
        "loader_ratio": round(ratio, 3),
        "paired_worker_ratio": round(float(worker_ratio), 3),
        "getitem_cpu_ratio": round(cpu["plain"] / cpu["store"], 3),
        "plain_clips_per_s": round(plain_rate, 1),
        "store_clips_per_s": round(store_rate, 1),
        "read_ms_plain": round(plain_ms, 3),
        "read_ms_store": round(store_ms, 3),
        "raw_vs_base64_decrypt_speedup": round((t2 - t1) / (t1 - t0), 2),
        "disk_ratio": round(store_bytes / plain_bytes, 3),
        "clips": clips,
        "clip_kb": round(plain_bytes / len(ids) / 1e3, 1),
        "workers": args.workers,
    }
    print(f"plain {rates['plain']}\nstore {rates['store']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
