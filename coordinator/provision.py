"""What a simulated run is given before it starts: its data, its shards and its keys.

A simulation plays both sides, so the run setup provides what real nodes bring themselves: the
config's synthetic world as an encrypted store (built once per world under ``<runs-dir>/stores``
and reused), each virtual client's shard of it, each client's report signing key (written where
the client's state keeps it, ``veilfed.federation.rundir``) and the HE keys. On real nodes none
of this exists on the coordinator (``prepare.prepare_deployment``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from veilfed.crypto.he_keys import PUBLIC_NAME, SECRET_NAME, keygen, load_context
from veilfed.crypto.he_params import HEParams
from veilfed.crypto.keys import write_key_file
from veilfed.data import synth
from veilfed.data.files import encode_clip
from veilfed.data.partition import partition, skew_labels
from veilfed.data.store import EncryptedStore
from veilfed.errors import UsageError
from veilfed.federation.rundir import SIGNING_KEY_FILE, client_dir
from veilfed.federation.sections import HEConfig
from veilfed.privacy.report_signing import KeyRegistry
from veilfed.privacy.signing import generate_signing_key, public_key_path
from veilfed.tasks import TaskSpec


def world_store(cfg: Any, runs_dir: Path) -> tuple[Path, Path]:
    """The config's synthetic world as an encrypted store, built once per world and reused."""
    world = cfg.world.world_config()
    spec = json.dumps({"world": world.to_dict(), "clips": cfg.world.clips}, sort_keys=True)
    home = runs_dir / "stores" / hashlib.sha256(spec.encode()).hexdigest()[:16]
    store, key = home / "store", home / "store.key"
    if (home / "complete").exists():
        return store, key
    if home.exists():
        shutil.rmtree(home)  # an interrupted build: start over
    fkey = write_key_file(key)
    enc = EncryptedStore.create(store, fkey)
    with enc.batch():
        for clip in synth.iter_world(world, cfg.world.clips):
            enc.put(clip.clip_id, encode_clip(clip), clip.labels)
    (home / "complete").write_text(spec)
    return store, key


def make_shards(
    store: Any,
    num_clients: int,
    scheme: str,
    alpha: float,
    seed: int,
    missing: dict[str, float] | None = None,
    specs: dict[str, TaskSpec] | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Partition the store's clip ids among clients (Dirichlet skew over the first declared
    classification task, :func:`veilfed.data.partition.skew_labels`); also which modalities each
    client lacks (``missing``: modality -> fraction of clients)."""
    ids = sorted(store.ids())
    labels = [0] * len(ids)
    if scheme == "dirichlet":
        labels = skew_labels(store.labels, ids, specs)
    parts = partition(labels, num_clients, scheme=scheme, alpha=alpha, seed=seed, missing=missing)
    shards = {p.client_id: [ids[i] for i in p.indices] for p in parts}
    for cid, share in shards.items():
        if len(share) < 2:
            raise UsageError(
                f"client {cid}: shard has {len(share)} clip(s); each client needs >= 2 (train + "
                f"held-out). Use fewer --clients or a bigger world ({len(ids)} clips)"
            )
    return shards, {p.client_id: list(p.missing) for p in parts if p.missing}


def provision_signing_keys(run_dir: str | Path, client_ids: list[str]) -> KeyRegistry:
    """Give every virtual client a report signing key and register the public halves.

    A real node creates its own key and the coordinator pins the public half it offers at
    discovery (``admission.admit``); in a simulation the run setup plays both parts, writing
    each key where the client's state keeps it (``veilfed.federation.rundir``).
    """
    registry = KeyRegistry(Path(run_dir) / "keys")
    for cid in client_ids:
        key = client_dir(run_dir, cid) / SIGNING_KEY_FILE
        if not key.exists():
            generate_signing_key(key)
        registry.register(cid, public_key_path(key))
    return registry


def resolve_he(
    he_cfg: HEConfig, he_dir: Path | None, shards: dict[str, list[str]], holdout: float
) -> HEParams:
    """HE parameters: the given keys' (both files checked, same key id) or sized from [he].

    The total sample count of a round must fit the keys: checked here against all training
    examples, so no round can fail on it later.
    """
    if he_dir is not None:
        public = load_context(he_dir / PUBLIC_NAME, require_secret=False)
        secret = load_context(he_dir / SECRET_NAME, require_secret=True)
        if public.key_id != secret.key_id:
            raise UsageError(
                f"--he-dir {he_dir}: {PUBLIC_NAME} and {SECRET_NAME} are from different keygens; "
                "run `veilfed he keygen --out DIR --force`"
            )
        params = public.params
        params.check_aggregation_only(f"--he-dir {he_dir}")
    else:
        params = HEParams.for_bounds(
            he_cfg.max_abs_update, he_cfg.max_total_weight, he_cfg.tolerance
        )
    total = sum(len(s) - max(1, round(holdout * len(s))) for s in shards.values())
    if total > params.max_total_weight:
        raise UsageError(
            f"[he] max_total_weight {params.max_total_weight} < {total} training examples a round "
            "may sum; raise it (or regenerate --he-dir keys with a larger --max-total-weight)"
        )
    return params


def he_files(he_cfg: HEConfig, params: HEParams, he_dir: Path | None, run_dir: Path) -> HEConfig:
    """Key files for the run: the given ones, or fresh keys in ``<run>/he/``.

    In simulation every virtual client reads ``secret.ctx`` from the run directory and the
    coordinator only ever loads ``public.ctx``; on real nodes the secret file is distributed to
    the clients only (docs/he.md).
    """
    if he_dir is None:
        secret, public = keygen(run_dir / "he", params)
    else:
        secret, public = he_dir / SECRET_NAME, he_dir / PUBLIC_NAME
    return dataclasses.replace(
        he_cfg, secret_path=str(secret.resolve()), public_path=str(public.resolve())
    )
