"""Data benchmark: clips/s for synthesis (render + MP4 encode) and for decode, default size,
and a federated client's input time in its second round over its first (the sample cache:
round 1 decrypts, decodes and renders every clip; round 2 reads them from process memory).

    python experiments/bench/data.py [--quick]

Prints a table and, last, one JSON line of headline figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from veilfed.clients.sample_cache import CachedClips, SampleCache
from veilfed.crypto.keys import FernetKey
from veilfed.data import synth, video
from veilfed.data.dataset import ClipDataset, MemorySource
from veilfed.data.files import encode_clip
from veilfed.data.store import EncryptedStore


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def client_rounds(clips: list, blobs: list[bytes], cfg: synth.WorldConfig) -> dict[str, float]:
    """Seconds a client spends on its inputs in round 1 and round 2 (every clip once per round,
    from a real encrypted store), with the cache and, side by side, without it."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = EncryptedStore.create(tmp, FernetKey.generate())
        with store.batch():
            for clip, blob in zip(clips, blobs, strict=True):
                store.put(clip.clip_id, blob, clip.labels)
        for name, cap in (("cached", 1 << 34), ("uncached", 0)):
            data = CachedClips(ClipDataset(store, cfg), ("bench", name), cache=SampleCache(cap))
            for rnd in (1, 2):
                start = time.perf_counter()
                for i in range(len(data)):
                    data[i]
                out[f"{name}_round{rnd}_s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer clips (under a minute)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n = 16 if args.quick else 64
    cfg = synth.WorldConfig()
    clips = list(synth.iter_world(cfg, n))
    blobs = [encode_clip(c) for c in clips]
    figures = {
        "generate_clips_s": rate(lambda i: synth.generate_clip(cfg, i), n),
        "encode_clips_s": rate(lambda i: encode_clip(clips[i]), n),
        "synth_clips_s": rate(lambda i: encode_clip(synth.generate_clip(cfg, i)), n),
        "decode_clips_s": rate(
            lambda i: video.decode(
                blobs[i], cfg.frames, (cfg.height, cfg.width), cfg.sample_rate, cfg.audio_samples
            ),
            n,
        ),
    }
    ds = ClipDataset(MemorySource(clips, encode=True), cfg)
    figures["sample_clips_s"] = rate(lambda i: ds[i], n)  # decode + all targets
    rounds = client_rounds(clips, blobs, cfg)
    size = f"{cfg.frames}x{cfg.height}x{cfg.width}"
    print(f"{'stage':<22}{'clips/s':>10}   ({n} clips of {size}, 1 process)")
    for name, value in figures.items():
        print(f"{name:<22}{value:>10.1f}")
    ratio = rounds["cached_round2_s"] / rounds["cached_round1_s"]
    print(
        f"client input time, round 2 / round 1: {ratio:.4f} with the sample cache "
        f"({rounds['cached_round1_s']:.2f} s -> {rounds['cached_round2_s']:.4f} s), "
        f"{rounds['uncached_round2_s'] / rounds['uncached_round1_s']:.2f} without"
    )
    print(
        json.dumps(
            {
                "bench": "data",
                "clips": n,
                "size": size,
                **{k: round(v, 1) for k, v in figures.items()},
                "mean_mp4_bytes": round(sum(map(len, blobs)) / n),
                "client_input_round2_over_round1": round(ratio, 5),
                "client_input_uncached_round2_over_round1": round(
                    rounds["uncached_round2_s"] / rounds["uncached_round1_s"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
