"""Model benchmark: (a) DP-SGD and adversarial-training step time / non-private step time,
(b) fusions compared.

    python experiments/bench/model.py [--quick] [--threads N]

(a) On the default model (experiments/default.toml [model]) and a default batch (16 clips of
16x64x64, every task), one optimizer step is timed non-private, with Opacus per-sample-gradient
hooks and with ghost clipping, and with ``[train] adversarial`` (PGD-3 at eps 4/255 on video and
audio) non-private and with hooks, interleaved round by round so machine noise hits all alike;
the ratios are of medians. (b) Each fusion trains for the same short budget on the synthetic world
(all tasks, small geometry), then is evaluated clean and with each modality corrupted (video/audio
replaced by noise, text by random tokens; the presence mask still says "present").

Prints tables and, last, one JSON line of headline figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from veilfed.config import load_config
from veilfed.data.text import PAD, Tokenizer
from veilfed.model import create_model, evaluate
from veilfed.model.check import OneBatchDataset, example_batch, stack_samples
from veilfed.robust.settings import AdversarialSettings
from veilfed.train import CachedDataset, make_private, train_steps

ADVERSARIAL = AdversarialSettings(eps=4 / 255, steps=3, modality="all")
ROOT = Path(__file__).resolve().parents[2]
FUSIONS = ("concat", "vote", "gated", "cross_attention", "transformer")
HEADLINE = {  # task -> metric shown in the fusion table
    "action": "accuracy",
    "sentiment": "accuracy",
    "moderation": "f1",
    "quality": "mae",
    "qa": "accuracy",
    "caption": "token_f1",
    "segmentation": "miou",
    "restoration": "psnr",
}


def _step_timer(model_cfg: Any, batch: dict[str, Any], mode: str) -> Any:
    """A closure running one optimizer step of ``mode`` ("plain", "hooks", "ghost"; "+adv":
    with adversarial training)."""
    torch.manual_seed(0)
    model = create_model(model_cfg)
    n = batch["video"].shape[0]
    loader = torch.utils.data.DataLoader(
        OneBatchDataset(batch), batch_size=n, collate_fn=stack_samples
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    privacy = None
    dp_mode, _, adv = mode.partition("+")
    if dp_mode != "plain":
        model, opt, loader, privacy = make_private(
            model, opt, loader, 1.0, 1.0, mode=dp_mode, poisson_sampling=False
        )
    adversarial = ADVERSARIAL if adv else None

    def step() -> float:
        start = time.perf_counter()
        train_steps(model, loader, opt, steps=1, privacy=privacy, adversarial=adversarial)
        return time.perf_counter() - start

    step()  # warm-up (allocations, first-call overheads)
    return step


def bench_dp(model_cfg: Any, rounds: int, batch_size: int, frames: int, size: int) -> dict:
    batch = example_batch(batch_size, frames, size, size)
    modes = ("plain", "hooks", "ghost", "plain+adv", "hooks+adv")
    timers = {mode: _step_timer(model_cfg, batch, mode) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in timers}
    for _ in range(rounds):
        for mode, step in timers.items():
            times[mode].append(step())
    med = {mode: statistics.median(v) for mode, v in times.items()}
    best = min(("hooks", "ghost"), key=med.__getitem__)
    params = sum(p.numel() for p in create_model(model_cfg).parameters())
    print(
        f"\n(a) DP-SGD step on the default model ({params:,} params), batch {batch_size} x "
        f"{frames}x{size}x{size}, median of {rounds} interleaved rounds"
    )
    for mode in timers:
        print(f"  {mode:<9} {med[mode]:7.3f} s/step   x{med[mode] / med['plain']:.2f}")
    return {
        "params": params,
        "plain_s": round(med["plain"], 4),
        "hooks_ratio": round(med["hooks"] / med["plain"], 3),
        "ghost_ratio": round(med["ghost"] / med["plain"], 3),
        "dp_step_ratio": round(med[best] / med["plain"], 3),
        "best_mode": best,
        "adversarial_ratio": round(med["plain+adv"] / med["plain"], 3),
        "dp_adversarial_ratio": round(med["hooks+adv"] / med["hooks"], 3),
    }


class _Corrupt:
    """Wraps an eval loader: one modality's content replaced by noise (mask untouched)."""

    def __init__(self, loader: Any, modality: str | None, vocab: int) -> None:
        self.loader, self.modality, self.vocab = loader, modality, vocab

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(0)
        for batch in self.loader:
            batch = dict(batch)
            m = self.modality
            if m == "video":
                batch["video"] = torch.rand(batch["video"].shape, generator=g)
            elif m == "audio":
                batch["audio"] = torch.rand(batch["audio"].shape, generator=g) * 2 - 1
            elif m == "text":
                random = torch.randint(4, self.vocab, batch["text"].shape, generator=g)
                batch["text"] = torch.where(batch["text"] == PAD, batch["text"], random)
            yield batch


def bench_fusions(cfg: Any, clips: int, steps: int) -> dict:
    from torch.utils.data import DataLoader

    from veilfed.data.dataset import ClipDataset, MemorySource, collate

    world = replace(cfg.world, frames=8, size=32, clips=clips, eval_clips=max(16, clips // 4))
    train_w, eval_w = world.world_config(), world.world_config(seed=world.seed + 1_000_003)
    train_ds = CachedDataset(ClipDataset(MemorySource.world(train_w, world.clips), train_w))
    eval_ds = CachedDataset(ClipDataset(MemorySource.world(eval_w, world.eval_clips), eval_w))
    train_dl = DataLoader(
        train_ds,
        batch_size=8,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    eval_dl = DataLoader(eval_ds, batch_size=16, collate_fn=collate)
    vocab = Tokenizer().vocab_size
    results: dict[str, dict[str, dict[str, float]]] = {}
    for fusion in FUSIONS:
        torch.manual_seed(0)
        model = create_model(replace(cfg.model, dim=32, pixel_dim=32, fusion=fusion))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        start = time.perf_counter()
        train_steps(model, train_dl, opt, steps=steps)
        train_s = time.perf_counter() - start
        results[fusion] = {"train_s": {"": train_s}}
        for corrupt in (None, "video", "audio", "text"):
            metrics = evaluate(model, _Corrupt(eval_dl, corrupt, vocab))
            results[fusion][corrupt or "clean"] = {
                t: metrics[t][k] for t, k in HEADLINE.items() if k in metrics.get(t, {})
            }
    tasks = [t for t in HEADLINE if t in cfg.model.tasks]
    print(
        f"\n(b) fusions after {steps} steps (batch 8, {clips} clips of 8x32x32); "
        "clean / video, audio, text corrupted"
    )
    head = "".join(f"{t[:10] + ':' + HEADLINE[t][:5]:>19}" for t in tasks)
    print(f"  {'fusion':<16}{'setting':<8}{head}")
    for fusion, res in results.items():
        for setting in ("clean", "video", "audio", "text"):
            row = "".join(f"{res[setting].get(t, float('nan')):>19.3f}" for t in tasks)
            print(f"  {fusion if setting == 'clean' else '':<16}{setting:<8}{row}")
    return {
        f: {
            s: {t: round(v, 4) for t, v in r[s].items()}
            for s in ("clean", "video", "audio", "text")
        }
        for f, r in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds/steps (< 1 minute)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--skip-fusions", action="store_true", help="only (a)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "experiments" / "default.toml")
    w = cfg.world
    dp = bench_dp(
        cfg.model,
        rounds=3 if args.quick else 7,
        batch_size=cfg.train.batch_size,
        frames=w.frames,
        size=w.size,
    )
    fusions = (
        {}
        if args.skip_fusions
        else bench_fusions(cfg, clips=32 if args.quick else 128, steps=8 if args.quick else 60)
    )
    print(
        json.dumps(
            {
                "bench": "model",
                "threads": torch.get_num_threads(),
                **dp,
                "ghost": dp["best_mode"] == "ghost",
                "fusions": fusions,
            }
        )
    )


if __name__ == "__main__":
    main()
