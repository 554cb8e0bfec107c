"""Where a client finds its node-local inputs: its clips, its key, its state, its HE secret.

The run settings travel in every message from the coordinator; everything *node-local* never
does. Two places hold it:

- **a real node** (``veilfed node start``): Flower's node config names the client (``client-id``),
  the node store its shard bundle was imported into (``store``, under the client's own Fernet
  key ``key-file``, from which the key its releases are sealed with at rest is derived), the
  node's state directory (``state-dir``: its cumulative accountant, releases and signing key),
  its privacy policy (``veilfed.clients.policy``) and, for HE runs, the clients' secret context
  (``he-context``). The coordinator's run directory is never read:
  it is on another machine.
- **a virtual client** (simulation): the run directory the settings name holds the shard table
  (``shards.json``), the modalities each client lacks, the client's state and the HE secret.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veilfed.clients.node import NodeState
from veilfed.clients.policy import NodePolicy
from veilfed.coordinator.settings import SimSettings, load_missing, load_shards
from veilfed.crypto.keys import FernetKey, read_key_file
from veilfed.data.partition import client_name
from veilfed.errors import UsageError

REAL_NODE_KEYS = ("client-id", "store", "key-file", "state-dir")
# Node config (``veilfed node start``): whether the held-out clips are evaluable, i.e. metrics on
# them may leave the node (``--share-eval-metrics``; default: no), and the fewest contributors an
# HE aggregate must sum before this node decrypts it (``--he-min-contributors``).
SHARE_EVAL_KEY = "share-eval-metrics"
HE_FLOOR_KEY = "he-min-contributors"
DEFAULT_HE_FLOOR = 3


@dataclass(frozen=True)
class ClientInputs:
    """One client's node-local inputs for one message."""

    client_id: str
    store: str  # encrypted store directory holding the client's clips
    key_file: str  # Fernet key file that opens ``store``
    clip_ids: tuple[str, ...]  # the whole shard (train + held-out)
    missing: tuple[str, ...]  # modalities this client lacks
    state: NodeState
    he_secret: str  # the clients' secret HE context ("" when the node has none)
    simulated: bool  # a virtual client; a real node never sends HE shadow (plaintext) copies
    policy: NodePolicy | None = None  # a real node's own privacy policy; None: a virtual client
    # Metrics (train loss, evaluation) leave the client: a virtual client (the user's own data)
    # always, a real node only with --share-eval-metrics (evaluation only; never its train loss).
    share_eval: bool = True
    he_min_contributors: int = DEFAULT_HE_FLOOR  # the node's floor wins over the run's


@functools.lru_cache(maxsize=8)
def _client_key(key_file: str) -> FernetKey:
    """The client's Fernet key: opens its clips and, derived, seals its releases at rest."""
    return read_key_file(key_file)


@functools.lru_cache(maxsize=8)
def _node_store_ids(store: str, key_file: str) -> tuple[str, ...]:
    from veilfed.data.store import EncryptedStore

    return tuple(sorted(EncryptedStore.open(store, _client_key(key_file)).ids()))


@functools.lru_cache(maxsize=4)
def _run_tables(run_dir: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A simulation's shard table and missing modalities, read once per Ray actor and run."""
    return load_shards(run_dir), load_missing(run_dir)


def is_real_node(node_config: dict[str, Any]) -> bool:
    return "client-id" in node_config


def client_inputs(settings: SimSettings, node_config: dict[str, Any]) -> ClientInputs:
    """The inputs of the client this node (real) or partition (simulation) is."""
    if is_real_node(node_config):
        return _real_node(node_config)
    cid = client_name(int(node_config["partition-id"]))
    shards, missing = _run_tables(settings.run_dir)
    ids = shards.get(cid)
    if not ids:
        raise UsageError(f"client {cid}: no shard in {settings.run_dir}/shards.json")
    return ClientInputs(
        client_id=cid,
        store=settings.store,
        key_file=settings.key_file,
        clip_ids=tuple(ids),
        missing=tuple(missing.get(cid, ())),
        state=NodeState.in_run(settings.run_dir, cid, _client_key(settings.key_file)),
        he_secret=settings.he.secret_path,
        simulated=True,
        he_min_contributors=settings.he.min_contributors,
    )


def _real_node(cfg: dict[str, Any]) -> ClientInputs:
    absent = [k for k in REAL_NODE_KEYS if not cfg.get(k)]
    if absent:
        raise UsageError(
            f"node config lacks {', '.join(absent)}; start the node with `veilfed node start`"
        )
    cid = str(cfg["client-id"])
    store, key_file = str(cfg["store"]), str(cfg["key-file"])
    ids = _node_store_ids(store, key_file)
    if not ids:
        raise UsageError(f"client {cid}: node store {store} holds no clips; check --shard")
    return ClientInputs(
        client_id=cid,
        store=store,
        key_file=key_file,
        clip_ids=ids,
        missing=(),
        state=NodeState.on_node(Path(str(cfg["state-dir"])), cid, _client_key(key_file)),
        he_secret=str(cfg.get("he-context") or ""),
        simulated=False,
        policy=NodePolicy.from_node_config(cfg),
        share_eval=cfg.get(SHARE_EVAL_KEY) is True,
        he_min_contributors=he_floor(cfg.get(HE_FLOOR_KEY, DEFAULT_HE_FLOOR)),
    )


def he_floor(value: Any, where: str = "--he-min-contributors") -> int:
    """A node's HE contributor floor: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where} {value!r}: use an integer >= 1 (default {DEFAULT_HE_FLOOR})")
    return value
