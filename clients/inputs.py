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

from veilfed.clients.node_state import NodeState
from veilfed.clients.policy import NodePolicy
from veilfed.crypto.keys import FernetKey, read_key_file
from veilfed.data.partition import client_name
from veilfed.errors import UsageError
from veilfed.federation.keys import (
    NODE_CLIENT_ID,
    NODE_HE_CONTEXT,
    NODE_HE_FLOOR,
    NODE_KEY_FILE,
    NODE_SHARE_EVAL,
    NODE_STATE_DIR,
    NODE_STORE,
    PARTITION_ID,
    REAL_NODE_KEYS,
)
from veilfed.federation.rundir import SHARDS_FILE, load_missing, load_shards
from veilfed.federation.settings import RunSettings

# A node decrypts an HE aggregate only if it sums at least this many contributors, unless its
# node config (``--he-min-contributors``) says otherwise. Held-out metrics stay on a real node
# unless its node config marks them evaluable (``--share-eval-metrics``).
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
def client_key(key_file: str) -> FernetKey:
    """The client's Fernet key: opens its clips and, derived, seals its releases at rest."""
    return read_key_file(key_file)


@functools.lru_cache(maxsize=8)
def _node_store_ids(store: str, key_file: str) -> tuple[str, ...]:
    from veilfed.data.store import EncryptedStore

    return tuple(sorted(EncryptedStore.open(store, client_key(key_file)).ids()))


@functools.lru_cache(maxsize=4)
def _run_tables(run_dir: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A simulation's shard table and missing modalities, read once per Ray actor and run."""
    return load_shards(run_dir), load_missing(run_dir)


def is_real_node(node_config: dict[str, Any]) -> bool:
    return NODE_CLIENT_ID in node_config


def client_inputs(settings: RunSettings, node_config: dict[str, Any]) -> ClientInputs:
    """The inputs of the client this node (real) or partition (simulation) is."""
    if is_real_node(node_config):
        return _real_node(node_config)
    cid = client_name(int(node_config[PARTITION_ID]))
    shards, missing = _run_tables(settings.run_dir)
    ids = shards.get(cid)
    if not ids:
        raise UsageError(f"client {cid}: no shard in {settings.run_dir}/{SHARDS_FILE}")
    return ClientInputs(
        client_id=cid,
        store=settings.store,
        key_file=settings.key_file,
        clip_ids=tuple(ids),
        missing=tuple(missing.get(cid, ())),
        state=NodeState.in_run(settings.run_dir, cid, client_key(settings.key_file)),
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
    cid = str(cfg[NODE_CLIENT_ID])
    store, key_file = str(cfg[NODE_STORE]), str(cfg[NODE_KEY_FILE])
    ids = _node_store_ids(store, key_file)
    if not ids:
        raise UsageError(f"client {cid}: node store {store} holds no clips; check --shard")
    return ClientInputs(
        client_id=cid,
        store=store,
        key_file=key_file,
        clip_ids=ids,
        missing=(),
        state=NodeState.on_node(Path(str(cfg[NODE_STATE_DIR])), cid, client_key(key_file)),
        he_secret=str(cfg.get(NODE_HE_CONTEXT) or ""),
        simulated=False,
        policy=NodePolicy.from_node_config(cfg),
        share_eval=cfg.get(NODE_SHARE_EVAL) is True,
        he_min_contributors=he_floor(cfg.get(NODE_HE_FLOOR, DEFAULT_HE_FLOOR)),
    )


def he_floor(value: Any, where: str = "--he-min-contributors") -> int:
    """A node's HE contributor floor: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where} {value!r}: use an integer >= 1 (default {DEFAULT_HE_FLOOR})")
    return value
