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

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veilfed.errors import UsageError
from veilfed.io import write_bytes_atomic, write_text_atomic
from veilfed.privacy.reports import generate_signing_key, key_id, load_signing_key, public_pem

LOG_ARTIFACT = "privacy/round_log.jsonl"
COORDINATOR_KEY_ARTIFACT = "privacy/coordinator.pem"
COORDINATOR_PEM = "coordinator.pem"  # in a --keys directory, beside the clients' <id>.pub


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(entry)).hexdigest()


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
            signature = self.key.sign(_canonical(entry))
            lines.append(
                json.dumps(
                    {
                        "entry": entry,
                        "key_id": key_id(self.key.public_key()),
                        "signature": base64.b64encode(signature).decode("ascii"),
                    },
                    sort_keys=True,
                    separators=(",", ":"),
                )
            )
            prev = entry_hash(entry)
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
    prev = ""
    for i, line in enumerate((ln for ln in text.splitlines() if ln.strip()), 1):
        where = f"{LOG_ARTIFACT} line {i}"
        try:
            data = json.loads(line)
            entry, signature = data["entry"], base64.b64decode(data["signature"], validate=True)
            key.verify(signature, _canonical(entry))
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
        entries.append(entry)
        prev = entry_hash(entry)
    if not entries or entries[0].get("kind") != "settings":
        raise UsageError(f"{LOG_ARTIFACT}: does not start with the run's signed settings")
    if entries[-1].get("kind") != "end":
        raise UsageError(
            f"{LOG_ARTIFACT}: has no closing entry: the run is unfinished or the log lost its "
            "last rounds; audit it after the run finishes"
        )
    return entries
