"""CKKS secure aggregation cost: veilfed's parameters vs NVIDIA FLARE's, side by side in one run.

For a model-sized update vector and a few clients, measures per parameter set: message bytes over
fp32 bytes, (client encrypt + coordinator aggregate + client decrypt) time over plaintext FedAvg
time, and the max abs error of the decrypted average against the plaintext average (for the round
and for the worst case: one client of weight 1). Messages go through bytes, as over Flower.

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


def run_params(
    name: str, params: HEParams, flats: list[np.ndarray], weights: list[int], plain_ms: float
) -> dict[str, Any]:
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
    he_ms = statistics.mean(encrypt_ms) + agg.aggregate_ms + result.decrypt_ms
    return {
        "name": name,
        "params": params.to_dict(),
        "upload_bytes_ratio": upload_ratio,
        "download_bytes_ratio": len(download) / (4 * flats[0].size),
        "encrypt_ms": statistics.mean(encrypt_ms),
        "aggregate_ms": agg.aggregate_ms,
        "decrypt_ms": result.decrypt_ms,
        "plain_ms": plain_ms,
        "time_ratio": he_ms / plain_ms,
        "he_ms": he_ms,
        "max_abs_error": round_error,
        "worst_case_error": worst_error,
        "error_bound": result.error_bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small vector, finishes in seconds")
    parser.add_argument("--size", type=int, default=None, help="update length (default 2M)")
    parser.add_argument("--clients", type=int, default=None, help="clients per round (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = args.size or (100_000 if args.quick else 2_000_000)
    clients = args.clients or (3 if args.quick else 4)

    rng = np.random.default_rng(args.seed)
    # Model-delta-like values: small, heavy around zero, within the clients' enforced bound.
    flats = [np.clip(rng.normal(0, 0.05, size), -1, 1).astype(np.float32) for _ in range(clients)]
    weights = [int(w) for w in rng.integers(20, 500, clients)]
    plain_ms = _plain_ms(flats, weights)

    ours = run_params("veilfed", HEParams.for_bounds(), flats, weights, plain_ms)
    flare = run_params("flare", HEParams.flare(), flats, weights, plain_ms)

    print(f"{size} floats, {clients} clients, plaintext FedAvg {plain_ms:.1f} ms")
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
                "params": ours["params"],
                "bytes_ratio": round(ours["upload_bytes_ratio"], 3),
                "flare_bytes_ratio": round(flare["upload_bytes_ratio"], 3),
                "time_ratio": round(ours["time_ratio"], 1),
                "flare_time_ratio": round(flare["time_ratio"], 1),
                "bytes_vs_flare": round(flare["upload_bytes_ratio"] / ours["upload_bytes_ratio"], 2),
                "speedup_vs_flare": round(flare["he_ms"] / ours["he_ms"], 2),
                "max_abs_error": ours["max_abs_error"],
                "worst_case_error": ours["worst_case_error"],
                "flare_max_abs_error": flare["max_abs_error"],
            }
        )
    )


if __name__ == "__main__":
    main()
