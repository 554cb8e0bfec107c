"""Encrypted shard bundles (.vfs): how clips move from the data owner to a client node.

A bundle is one file::

    b"VFBUNDL\\1"
    u32 length + JSON   {"format": "veilfed-bundle", "version": 1, "client": ID, "key_id": ...}
    u32 length + token  manifest JSON under the client key: client, chunk size, clips in order
                        with chunk count, length and nonce
    u32 length + token  ... each clip's labels record then its video chunks (store record format)

Every clip is re-encrypted from the store key to the *client's* key, so node A's key cannot open
node B's bundle. By default a client key is derived from the store key with HKDF
(``FernetKey.derive("client:" + ID)``; the owner hands it over with ``veilfed keys derive``); an
explicit key file may be given instead. Import checks everything, then writes the tokens unchanged
into the node's store (whose key is the client key): the bytes that travel are the bytes at rest,
and any later network transport moves exactly these bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veilfed.crypto.keys import FernetKey, InvalidToken
from veilfed.data.partition import client_name, partition, skew_labels
from veilfed.data.records import ClipEntry, join_records, open_clip, seal_record, split_records
from veilfed.data.store import EncryptedStore
from veilfed.errors import CheckFailed, UsageError
from veilfed.io import atomic_writer

MAGIC = b"VFBUNDL\x01"
FORMAT = "veilfed-bundle"


def client_key(store_key: FernetKey, client: str) -> FernetKey:
    """The per-client key derived from the store key (one-way: it cannot recover the store key)."""
    return store_key.derive(f"client:{client}")


def read_clip_list(path: str | Path) -> list[str]:
    """Clip ids from a file: a JSON list, or one id per line."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read clip list ({exc}); check --clips") from None
    if text.lstrip().startswith("["):
        try:
            return [str(c) for c in json.loads(text)]
        except ValueError:
            raise UsageError(f"{path}: clip list is not a JSON list of ids") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def partition_ids(
    store: EncryptedStore,
    client: str,
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
) -> list[str]:
    """The clips ``veilfed.data.partition`` gives ``client`` over the store's sorted clip ids."""
    ids = store.ids()
    names = [client_name(i) for i in range(num_clients)]
    if client not in names:
        raise UsageError(
            f"--client {client}: with --num-clients {num_clients} use one of "
            f"{names[0]} .. {names[-1]}"
        )
    labels = skew_labels(store.labels, ids) if scheme == "dirichlet" else [0] * len(ids)
    share = next(
        p for p in partition(labels, num_clients, scheme, alpha, seed) if p.client_id == client
    )
    return [ids[i] for i in share.indices]


def export_bundle(
    store: EncryptedStore,
    client: str,
    out: str | Path,
    key: FernetKey | None = None,
    clip_ids: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the client's clips, re-encrypted under the client's key, to ``out``.

    An existing ``out`` is never replaced unless ``overwrite`` (``--force``): a bundle written
    over the owner's key file would destroy the only copy of that key.
    """
    key = key or client_key(store.keys[0], client)
    ids = list(store.ids() if clip_ids is None else clip_ids)
    if not ids:
        raise UsageError(f"{store.root}: no clips to export for client {client}")
    missing = [c for c in ids if c not in store]
    if missing:
        raise UsageError(f"{store.root}: no clip {missing[0]!r} in this store; check the clip list")
    clips: list[dict[str, Any]] = []
    with atomic_writer(out, 0o600, overwrite=overwrite) as fh:
        header = json.dumps(
            {"format": FORMAT, "version": 1, "client": client, "key_id": key.key_id}
        ).encode()
        fh.write(MAGIC + join_records([header]))
        body: list[bytes] = []
        for clip_id in ids:
            entry = store.entry(clip_id)
            records = store.records(clip_id)
            for rec in open_clip(store.keys, clip_id, entry, records, str(store.root)):
                body.append(
                    seal_record(
                        key,
                        rec.clip_id,
                        rec.kind,
                        rec.index,
                        rec.count,
                        rec.total,
                        rec.nonce,
                        rec.payload,
                    )
                )
            clips.append(
                {
                    "id": clip_id,
                    "chunks": entry.chunks,
                    "length": entry.length,
                    "nonce": entry.nonce.hex(),
                }
            )
        manifest = json.dumps(
            {"client": client, "chunk_size": store.chunk_size, "clips": clips}
        ).encode()
        fh.write(join_records([key.encrypt(manifest)]))
        fh.write(join_records(body))
    return {"client": client, "clips": len(ids), "key_id": key.key_id, "out": str(out)}


def read_bundle(
    path: str | Path, key: FernetKey
) -> tuple[str, int, list[tuple[str, ClipEntry, list[memoryview]]]]:
    """Open and fully check a bundle: (client, chunk size, [(clip id, entry, tokens)])."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read bundle ({exc.strerror})") from None
    if data[: len(MAGIC)] != MAGIC:
        raise UsageError(f"{path}: not a veilfed bundle; pass a file from `veilfed data export`")
    records = split_records(memoryview(data)[len(MAGIC) :], str(path))
    try:
        header = json.loads(bytes(records[0]))
        client = str(header["client"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise CheckFailed(f"{path}: bundle header is damaged; export the bundle again") from None
    if header.get("key_id") != key.key_id:
        raise UsageError(
            f"{path}: bundle is for client {client} (key {header.get('key_id')}), not key "
            f"{key.key_id}; use client {client}'s key file"
        )
    try:
        manifest = json.loads(key.decrypt(records[1]))
        if str(manifest["client"]) != client:
            raise ValueError
        entries = [
            (
                str(c["id"]),
                ClipEntry("", int(c["chunks"]), int(c["length"]), bytes.fromhex(c["nonce"])),
            )
            for c in manifest["clips"]
        ]
        chunk_size = int(manifest["chunk_size"])
    except (IndexError, InvalidToken, ValueError, KeyError, TypeError):
        raise CheckFailed(
            f"{path}: bundle manifest does not authenticate (tampered or truncated); export the "
            "bundle again"
        ) from None
    out: list[tuple[str, ClipEntry, list[memoryview]]] = []
    pos = 2
    for clip_id, entry in entries:
        tokens = records[pos : pos + entry.chunks + 1]
        pos += entry.chunks + 1
        open_clip((key,), clip_id, entry, tokens, str(path), "export the bundle again")
        out.append((clip_id, entry, tokens))
    if pos != len(records):
        raise CheckFailed(f"{path}: bundle has {len(records) - pos} extra records; export again")
    return client, chunk_size, out


def import_bundle(path: str | Path, store_dir: str | Path, key: FernetKey) -> dict[str, Any]:
    """Check a bundle, then add its tokens unchanged to the node store at ``store_dir``.

    A clip the node already holds under the same id is replaced: the owner's newer export wins.
    """
    client, chunk_size, clips = read_bundle(path, key)
    store = EncryptedStore.create(store_dir, key, chunk_size=chunk_size, exist_ok=True)
    with store.batch():
        for clip_id, entry, tokens in clips:
            store.put_records(clip_id, tokens, entry, replace=True)
    return {"client": client, "clips": len(clips), "store": str(store_dir)}
