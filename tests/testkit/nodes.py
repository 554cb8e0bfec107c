"""Real node configs, as ``veilfed node start`` writes them, for in-process coordinator tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from veilfed.clients.policy import NodePolicy
from veilfed.config import load_config
from veilfed.crypto.keys import FernetKey, write_key_file
from veilfed.data import synth
from veilfed.data.bundle import client_key, export_bundle, partition_ids
from veilfed.data.files import encode_clip
from veilfed.data.store import EncryptedStore
from veilfed.launch.start_node import NodeOptions, import_shard, node_config

CLIENTS = ("client-0000", "client-0001")


def owner_store(config: Path, root: Path):  # type: ignore[no-untyped-def]
    """The data owner's encrypted store of the config's synthetic world."""
    cfg = load_config(config)
    owner = FernetKey.generate()
    store = EncryptedStore.create(root / "owner-store", owner)
    store.put_many(
        (clip.clip_id, encode_clip(clip), clip.labels)
        for clip in synth.iter_world(cfg.world.world_config(), cfg.world.clips)
    )
    return store, owner


def node_configs(config: Path, root: Path, he_secret: Path | None) -> list[dict[str, Any]]:
    """Each client's bundle exported, imported into its node store; the node configs."""
    store, owner = owner_store(config, root)
    configs = []
    for cid in CLIENTS:
        bundle, key = root / f"{cid}.vfs", root / f"{cid}.key"
        export_bundle(store, cid, bundle, clip_ids=partition_ids(store, cid, len(CLIENTS)))
        write_key_file(key, client_key(owner, cid))
        opts = NodeOptions(
            "h:1", bundle, key, root, root, root / cid, he_context=he_secret,
            policy=NodePolicy(budget=8.0),
        )  # fmt: skip
        opts.he_min_contributors = 2  # two-node runs; the default floor is 3
        assert import_shard(bundle, key, opts.state) == cid
        configs.append(parse_config_args([node_config(cid, opts)]))
    return configs
