"""The coordinator's signed round log: what the run was, and who it counted in each round.

The coordinator signs, with its own Ed25519 key (``<run_dir>/coordinator.key``, mode 0600; the
public half at ``<run_dir>/keys/coordinator.pem``, beside the clients' ``<id>.pub``), one entry per
event, each linked to the previous by SHA-256:

* ``settings`` (first): the run id and the privacy settings the audit pins — δ, ε budget,
  accountant — and each admitted client's training-example count ``n`` (δ <= 1/n) and report key id;
* ``round``: the round, the model digest of the global model its messages carried
  (``veilfed.federation.digest.model_digest``), who was sampled, whose report verified
  (``reported``: ε spent) and whose update was accepted;
* ``end`` (last): the number of rounds; without it the log may have lost its tail.

Artifacts: ``privacy/round_log.jsonl`` (one ``{"entry", "key_id", "signature"}`` per line) and
``privacy/coordinator.pem``. A copied log names another run id; a cut log has no ``end``; an edited
one breaks a signature or a link.
"""

from __future__ import annotations

import binascii
import json
import math
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic, write_text_atomic
from veilfed.privacy.ids import check_client_id
from veilfed.privacy.signing import (
    canonical_hash,
    canonical_json,
    generate_signing_key,
    key_id,
    load_signing_key,
    public_pem,
    sign_b64,
    verify_b64,
)

LOG_ARTIFACT = "privacy/round_log.jsonl"
COORDINATOR_KEY_ARTIFACT = "privacy/coordinator.pem"
COORDINATOR_PEM = "coordinator.pem"  # in a --keys directory, beside the clients' <id>.pub


class RoundLogWriter:
    """Appends signed entries to ``<run_dir>/round-log.jsonl``; a re-run round replaces itself."""

    def __init__(self, run_dir: str | Path, run_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id
        self.path = self.run_dir / "round-log.jsonl"
        key_path = self.run_dir / "coordinator.key"
        self.key: Ed25519PrivateKey = (
            load_signing_key(key_path) if key_path.exists() else generate_signing_key(key_path)
        )
        self.public_pem = public_pem(self.key.public_key())
        write_bytes_atomic(self.run_dir / "keys" / COORDINATOR_PEM, self.public_pem)

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line)["entry"] for line in self.path.read_text().splitlines() if line]

    def _write(self, entries: list[dict[str, Any]]) -> str:
        lines, prev = [], ""
        for entry in entries:
            entry = dict(entry, prev_hash=prev, run_id=self.run_id)
            signed = {
                "entry": entry,
                "key_id": key_id(self.key.public_key()),
                "signature": sign_b64(self.key, canonical_json(entry)),
            }
            lines.append(canonical_json(signed).decode("utf-8"))
            prev = canonical_hash(entry)
        text = "".join(line + "\n" for line in lines)
        write_text_atomic(self.path, text)
        return text

    def settings(self, settings: dict[str, Any]) -> str:
        """The first entry; kept as first written when a resumed run logs it again."""
        entries = self.entries()
        if entries and entries[0].get("kind") == "settings":
            return self._write(entries)
        return self._write([{"kind": "settings", **settings}, *entries])

    def round(self, record: dict[str, Any]) -> str:
        rnd = record["round"]
        kept = [
            e
            for e in self.entries()
            if e.get("kind") == "settings" or (e.get("kind") == "round" and e["round"] < rnd)
        ]
        return self._write([*kept, {"kind": "round", **record}])

    def end(self, rounds: int) -> str:
        kept = [e for e in self.entries() if e.get("kind") != "end"]
        return self._write([*kept, {"kind": "end", "rounds": rounds}])


def read_round_log(text: str, key: Ed25519PublicKey, run_id: str) -> list[dict[str, Any]]:
    """The verified entries of a round log; UsageError (cannot audit) on any break."""
    entries: list[dict[str, Any]] = []
    prev, last_round = "", 0
    for i, line in enumerate((ln for ln in text.splitlines() if ln.strip()), 1):
        where = f"{LOG_ARTIFACT} line {i}"
        try:
            data = json.loads(line)
            entry = data["entry"]
            verify_b64(key, data["signature"], canonical_json(entry))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise UsageError(f"{where}: not a signed round-log entry") from None
        except InvalidSignature:
            raise UsageError(
                f"{where}: signature does not match the coordinator key (altered, or signed by "
                "another coordinator)"
            ) from None
        if not isinstance(entry, dict) or entry.get("prev_hash") != prev:
            raise UsageError(f"{where}: does not link to the entry before it (entries missing?)")
        if entry.get("run_id") != run_id:
            raise UsageError(
                f"{where}: the round log is of run {entry.get('run_id')}, not {run_id} "
                "(copied from another run?)"
            )
        _check_entry(entry, where, first=not entries)
        if entries and entries[-1].get("kind") == "end":
            raise UsageError(f"{where}: entry after the closing entry")
        if entry["kind"] == "round":
            if entry["round"] <= last_round:
                raise UsageError(
                    f"{where}: round {entry['round']} after round {last_round}; rounds must ascend"
                )
            last_round = entry["round"]
        entries.append(entry)
        prev = canonical_hash(entry)
    if not entries or entries[0].get("kind") != "settings":
        raise UsageError(f"{LOG_ARTIFACT}: does not start with the run's signed settings")
    if entries[-1].get("kind") != "end":
        raise UsageError(
            f"{LOG_ARTIFACT}: has no closing entry: the run is unfinished or the log lost its "
            "last rounds; audit it after the run finishes"
        )
    return entries


def _check_entry(entry: dict[str, Any], where: str, first: bool) -> None:
    """The shape the audit reads of each kind of entry; a one-line ``UsageError`` otherwise.

    A signature proves who wrote an entry, not that it is well formed: a coordinator (or, with
    keys taken from MLflow, whoever wrote the run) can sign anything, and the audit must refuse
    it in one line rather than fail on it.
    """
    kind = entry.get("kind")
    if kind not in ("settings", "round", "end"):
        raise UsageError(f"{where}: entry kind {kind!r} is not settings, round or end")
    if first and kind != "settings":
        raise UsageError(f"{LOG_ARTIFACT}: does not start with the run's signed settings")
    if kind == "settings" and not first:
        raise UsageError(f"{where}: a second settings entry; the run's settings come once, first")
    if kind == "settings":
        _check_settings(entry, where)
    elif kind == "round":
        _positive_int(entry, "round", where)
        if not isinstance(entry.get("model_digest"), str):
            raise UsageError(f"{where}: round entry field 'model_digest' must be a string")
        for name in ("sampled", "reported", "accepted"):
            _client_ids(entry.get(name), f"{where}: round entry field {name!r}")
        if not isinstance(entry.get("aggregated", False), bool):
            raise UsageError(f"{where}: round entry field 'aggregated' must be true or false")
    else:
        _positive_int(entry, "rounds", where, low=0)


def _check_settings(entry: dict[str, Any], where: str) -> None:
    for name, low, high in (("delta", 0.0, 1.0), ("epsilon_budget", 0.0, math.inf)):
        value = entry.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not low < value < high:
            raise UsageError(
                f"{where}: settings field {name!r} must be a number in ({low}, {high})"
            )
    accountant = entry.get("accountant")
    if accountant is not None and not isinstance(accountant, str):
        raise UsageError(f"{where}: settings field 'accountant' must be a string")
    clients = entry.get("clients", {})
    if not isinstance(clients, dict):
        raise UsageError(
            f"{where}: settings field 'clients' must map client ids to their n, key_id"
        )
    for cid, info in clients.items():
        _client_ids([cid], f"{where}: settings field 'clients'")
        if not isinstance(info, dict):
            raise UsageError(f"{where}: settings clients[{cid!r}] must be an object (n, key_id)")
        n, kid = info.get("n"), info.get("key_id")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise UsageError(f"{where}: settings clients[{cid!r}].n must be an integer >= 0")
        if kid is not None and not isinstance(kid, str):
            raise UsageError(f"{where}: settings clients[{cid!r}].key_id must be a string or null")


def _positive_int(entry: dict[str, Any], name: str, where: str, low: int = 1) -> None:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = entry.get("kind")
        raise UsageError(f"{where}: {kind} entry field {name!r} must be an integer >= {low}")


def _client_ids(value: Any, what: str) -> None:
    if not isinstance(value, list):
        raise UsageError(f"{what} must be a list of client ids")
    for cid in value:
        if not isinstance(cid, str):
            raise UsageError(f"{what} holds {cid!r}, not a client id")
        try:
            check_client_id(cid)
        except UsageError as exc:
            raise UsageError(f"{what}: {exc}") from None
