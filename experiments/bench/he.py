"""CKKS secure aggregation cost: veilfed's parameters vs NVIDIA FLARE's, side by side in one run.

For a model-sized update vector and a few clients, measures per parameter set: message bytes over
fp32 bytes, (client encrypt + coordinator aggregate + client decrypt) time over plaintext FedAvg
time (medians over alternating repeats), and the max abs error of the decrypted average against
the plaintext average (for the round and for the worst case: one client of weight 1). Messages go
through bytes, as over Flower.

    python experiments/bench/he.py [--quick] [--size N] [--clients K]

Last line: one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from veilfed.crypto.he import (
    EncryptedUpdate,
    HEParams,
    aggregate,
    decrypt_average,
    encrypt_update,
    new_context,
    public_view,
    shadow_average,
)


def _plain_ms(flats: list[np.ndarray], weights: list[int], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        shadow_average(flats, weights)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_params(params: HEParams, flats: list[np.ndarray], weights: list[int]) -> dict[str, Any]:
    """One secure-aggregation round with ``params``; returns its cost and error figures."""
    ctx = new_context(params)
    coordinator = public_view(ctx)
    messages = {}
    encrypt_ms = []
    for i, (flat, weight) in enumerate(zip(flats, weights, strict=True)):
        update = encrypt_update(ctx, flat, weight)
        encrypt_ms.append(update.encrypt_ms)
        messages[f"client{i}"] = update.to_bytes()
    upload_ratio = statistics.mean(len(m) for m in messages.values()) / (4 * flats[0].size)
    agg, rejections = aggregate(coordinator, messages)
    assert agg is not None and not rejections, rejections
    download = agg.to_bytes()
    result = decrypt_average(ctx, EncryptedUpdate.from_bytes(download))
    round_error = float(np.max(np.abs(result.average - shadow_average(flats, weights))))
    lone = decrypt_average(ctx, aggregate(coordinator, {"c": encrypt_update(ctx, flats[0], 1)})[0])
    worst_error = float(np.max(np.abs(lone.average - flats[0])))
    return {
        "upload_bytes_ratio": upload_ratio,
        "download_bytes_ratio": len(download) / (4 * flats[0].size),
        "encrypt_ms": statistics.mean(encrypt_ms),
        "aggregate_ms": agg.aggregate_ms,
        "decrypt_ms": result.decrypt_ms,
        "max_abs_error": round_error,
        "worst_case_error": worst_error,
        "error_bound": result.error_bound,
    }


def _summary(runs: list[dict[str, Any]], plain_ms: float) -> dict[str, Any]:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    for key in ("max_abs_error", "worst_case_error"):
        out[key] = max(r[key] for r in runs)
    out["he_ms"] = out["encrypt_ms"] + out["aggregate_ms"] + out["decrypt_ms"]
    out["time_ratio"] = out["he_ms"] / plain_ms
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small vector, finishes in seconds")
    parser.add_argument("--size", type=int, default=None, help="update length (default 2M)")
    parser.add_argument("--clients", type=int, default=None, help="clients per round (default 4)")
    parser.add_argument(
        "--max-total-weight",
        type=int,
        default=2**20,
        help="round sample-count bound veilfed's parameters are sized for (2**10 gives N=2048)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="rounds per set (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = args.size or (100_000 if args.quick else 2_000_000)
    clients = args.clients or (3 if args.quick else 4)

    rng = np.random.default_rng(args.seed)
    # Model-delta-like values: small, heavy around zero, within the clients' enforced bound.
    flats = [np.clip(rng.normal(0, 0.05, size), -1, 1).astype(np.float32) for _ in range(clients)]
    high = max(2, min(500, args.max_total_weight // clients))
    weights = [int(w) for w in rng.integers(1, high, clients)]
    configs = {
        "veilfed": HEParams.for_bounds(max_total_weight=args.max_total_weight),
        "flare": HEParams.flare(),
    }
    # Shared machines are noisy: alternate the parameter sets and the plaintext baseline, and
    # report medians of the timings (byte counts are exact; errors are the worst seen).
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    plain = []
    for _ in range(args.repeats or (1 if args.quick else 3)):
        plain.append(_plain_ms(flats, weights))
        for name, params in configs.items():
            runs[name].append(run_params(params, flats, weights))
    plain_ms = statistics.median(plain)
    ours, flare = (_summary(runs[name], plain_ms) for name in configs)

    print(f"{size} floats, {clients} clients, plaintext FedAvg {plain_ms:.1f} ms (median)")
    cols = ["upload_bytes_ratio", "download_bytes_ratio", "encrypt_ms", "aggregate_ms"]
    cols += ["decrypt_ms", "time_ratio", "max_abs_error", "worst_case_error"]
    print(f"{'':>22} {'veilfed':>12} {'flare':>12}")
    for col in cols:
        print(f"{col:>22} {ours[col]:>12.4g} {flare[col]:>12.4g}")
    print(
        json.dumps(
            {
                "bench": "he",
                "size": size,
                "clients": clients,
                "params": configs["veilfed"].to_dict(),
                "bytes_ratio": round(ours["upload_bytes_ratio"], 3),
                "flare_bytes_ratio": round(flare["upload_bytes_ratio"], 3),
                "time_ratio": round(ours["time_ratio"], 1),
                "flare_time_ratio": round(flare["time_ratio"], 1),
                "bytes_vs_flare": round(
                    flare["upload_bytes_ratio"] / ours["upload_bytes_ratio"], 2
                ),
                "speedup_vs_flare": round(flare["he_ms"] / ours["he_ms"], 2),
                "max_abs_error": ours["max_abs_error"],
                "worst_case_error": ours["worst_case_error"],
                "flare_max_abs_error": flare["max_abs_error"],
            }
        )
    )


if __name__ == "__main__":
    main()
