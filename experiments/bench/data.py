"""Data benchmark: clips/s for synthesis (render + MP4 encode) and for decode, default size.

    python experiments/bench/data.py [--quick]

Prints a table and, last, one JSON line of headline figures.
"""

from __future__ import annotations

import argparse
import json
import time

from veilfed.data import synth, video
from veilfed.data.dataset import ClipDataset, MemorySource
from veilfed.data.files import encode_clip


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer clips (under a minute)")
    args = parser.parse_args()
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
    size = f"{cfg.frames}x{cfg.height}x{cfg.width}"
    print(f"{'stage':<22}{'clips/s':>10}   ({n} clips of {size}, 1 process)")
    for name, value in figures.items():
        print(f"{name:<22}{value:>10.1f}")
    print(
        json.dumps(
            {
                "bench": "data",
                "clips": n,
                "size": size,
                **{k: round(v, 1) for k, v in figures.items()},
                "mean_mp4_bytes": round(sum(map(len, blobs)) / n),
            }
        )
    )


if __name__ == "__main__":
    main()
