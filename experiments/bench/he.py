"""CKKS secure aggregation cost: veilfed's parameters vs NVIDIA FLARE's, and real federated rounds.

1. Library level, veilfed's parameters vs FLARE's on a model-sized random update vector: message
   bytes over fp32 bytes, (client encrypt + coordinator aggregate + client decrypt) time over
   plaintext FedAvg time (medians over alternating repeats), and the max abs error of the decrypted
   average (for the round and for the worst case: one client of weight 1). Messages go through
   bytes, as over Flower.
2. Federated rounds on the default model (experiments/federated.toml): the real coordinator round
   loop and the real ClientApp, in process (tests/testkit/fed.py's grid, no Ray), HE off
   and on alternately with the same seed and data; round wall time with HE over without, and the
   client message bytes over fp32 bytes the HE rounds logged (shadow copies off, as in production).
3. On the default model's weights: encrypting them packed into as few ciphertexts as possible
   (``encrypt_update`` on the flattened vector) vs one ciphertext group per tensor.

    python experiments/bench/he.py [--quick] [--size N] [--clients K] [--fed-clients K]

Last line: one JSON object of headline figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veilfed.crypto.he import decrypt_average, encrypt_update
from veilfed.crypto.he_aggregate import aggregate, shadow_average
from veilfed.crypto.he_keys import load_context, new_context, public_view
from veilfed.crypto.he_packing import flatten
from veilfed.crypto.he_params import HEParams
from veilfed.crypto.he_update import EncryptedUpdate

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "experiments" / "federated.toml"
TESTS = str(ROOT / "tests")  # the testkit package


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


def _one_run(config: Path, runs: Path, clients: int, rounds: int, he: bool) -> Any:
    """A full simulation through the real round loop and ClientApp (in process, no Ray)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from testkit.fed import LocalGrid  # the tests' in-process grid: Flower messages, no Ray actors

    from veilfed.coordinator import checkpoint
    from veilfed.coordinator.prepare import prepare
    from veilfed.coordinator.rounds import Coordinator

    # Every client in every round: an HE aggregate needs [he] min_contributors (3) of them.
    overrides = {"clients": clients, "rounds": rounds, "fraction": 1.0}
    settings, tracker = prepare(config, overrides, None, None, None, None, runs, he=he)
    if he and settings.he.shadow:  # shadow copies are a test aid; production rounds send none
        settings = dataclasses.replace(settings, he=dataclasses.replace(settings.he, shadow=False))
        settings.save()
    Coordinator(LocalGrid(clients), settings, tracker).run()
    tracker.finish("FINISHED")
    return settings, checkpoint.load(settings.run_dir)


def federated_rounds(config: Path, clients: int, rounds: int, pairs: int) -> dict[str, Any]:
    """HE off/on alternately, same seed and data; per-round wall times and HE message sizes."""
    walls: dict[bool, list[list[float]]] = {False: [], True: []}
    bytes_ratio = []
    with tempfile.TemporaryDirectory(prefix="bench-he-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        # Untimed warm-up of both paths with the same rounds: store synthesis, MLflow tables,
        # first torch/Opacus/TenSEAL calls and the σ calibration the clients cache per process.
        for he in (False, True):
            _one_run(config, Path(tmp) / "runs", clients, rounds, he)
        for _ in range(pairs):
            for he in (False, True):
                settings, ckpt = _one_run(config, Path(tmp) / "runs", clients, rounds, he)
                assert all(h["aggregated"] for h in ckpt.history), ckpt.history
                walls[he].append([h["metrics"]["round/wall_s"] for h in ckpt.history])
                if he:
                    bytes_ratio += [h["metrics"]["he/bytes_ratio"] for h in ckpt.history]
                    he_params = load_context(settings.he.public_path, require_secret=False).params
                else:
                    arrays = [np.asarray(a) for a in ckpt.arrays.values()]
    # One ratio per adjacent (off, on) pair, so slow phases of a shared machine hit both sides.
    ratios = [sum(on) / sum(off) for off, on in zip(walls[False], walls[True], strict=True)]
    return {
        "round_ratio": statistics.median(ratios),
        "round_ratios": ratios,
        "plain_round_s": statistics.median(w for run in walls[False] for w in run),
        "he_round_s": statistics.median(w for run in walls[True] for w in run),
        "bytes_ratio": statistics.median(bytes_ratio),
        "params": he_params,  # what the run's keys were generated with
        "arrays": arrays,
    }


def packed_vs_per_tensor(
    params: HEParams, arrays: list[np.ndarray], repeats: int, weight: int = 100
) -> dict[str, Any]:
    """Encrypt the model's weights packed vs one ciphertext group per tensor (same context)."""
    ctx = new_context(params)
    flat, _ = flatten(arrays)
    packed_s, per_tensor_s = [], []
    for _ in range(repeats):  # alternate, medians: the machine is shared
        start = time.perf_counter()
        packed = encrypt_update(ctx, flat, weight).to_bytes()
        packed_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        per_tensor = [encrypt_update(ctx, a.ravel(), weight).to_bytes() for a in arrays]
        per_tensor_s.append(time.perf_counter() - start)
    return {
        "values": int(flat.size),
        "tensors": len(arrays),
        "packed_ms": statistics.median(packed_s) * 1e3,
        "per_tensor_ms": statistics.median(per_tensor_s) * 1e3,
        "packed_bytes": len(packed),
        "per_tensor_bytes": sum(len(b) for b in per_tensor),
        "packed_ciphertexts": len(EncryptedUpdate.from_bytes(packed).chunks),
        "per_tensor_ciphertexts": sum(
            len(EncryptedUpdate.from_bytes(b).chunks) for b in per_tensor
        ),
    }


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
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="federated experiment (its model)"
    )
    parser.add_argument(
        "--fed-clients", type=int, default=3, help="virtual clients per run, all in every round"
    )
    parser.add_argument("--fed-rounds", type=int, default=None, help="rounds per run (default 2)")
    parser.add_argument(
        "--pairs", type=int, default=None, help="(HE off, HE on) run pairs (default 5, quick 2)"
    )
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

    fed = federated_rounds(
        args.config,
        args.fed_clients,
        args.fed_rounds or 2,
        args.pairs or (2 if args.quick else 5),
    )
    print(
        f"federated rounds ({args.config.name}'s model, {args.fed_clients} clients, in process): "
        f"plaintext {fed['plain_round_s']:.2f} s, HE {fed['he_round_s']:.2f} s per round "
        f"(medians); HE/plaintext per pair {[round(r, 3) for r in fed['round_ratios']]}, "
        f"client message / fp32 bytes {fed['bytes_ratio']:.3f}"
    )
    pack = packed_vs_per_tensor(fed["params"], fed["arrays"], 3 if args.quick else 5)
    print(
        f"{pack['values']} weights in {pack['tensors']} tensors: packed "
        f"{pack['packed_ciphertexts']} ciphertexts, {pack['packed_bytes']} B, "
        f"{pack['packed_ms']:.0f} ms; per tensor {pack['per_tensor_ciphertexts']} ciphertexts, "
        f"{pack['per_tensor_bytes']} B, {pack['per_tensor_ms']:.0f} ms"
    )
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
                "round_ratio": round(fed["round_ratio"], 3),
                "plain_round_s": round(fed["plain_round_s"], 3),
                "he_round_s": round(fed["he_round_s"], 3),
                "bytes_ratio_default_model": round(fed["bytes_ratio"], 3),
                "default_model_params": fed["params"].to_dict(),
                "default_model_values": pack["values"],
                "packed_vs_per_tensor_time": round(pack["packed_ms"] / pack["per_tensor_ms"], 3),
                "packed_vs_per_tensor_bytes": round(
                    pack["packed_bytes"] / pack["per_tensor_bytes"], 3
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
