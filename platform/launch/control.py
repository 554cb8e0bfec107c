"""The SuperLink's Control API, used in-process: register node keys, start a run, follow it.

This is what ``flwr supernode register`` and ``flwr run --stream`` do, called through the same
Flower client (``flwr.cli.utils.init_http_client_from_connection``) so no per-call CLI start-up
and no shared ``~/.flwr`` config file are needed. TLS is always on: the client trusts only the
deployment's CA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veilfed.crypto.app_signing import SIGNATURE_KEY, sign_fab
from veilfed.errors import UsageError


@dataclass(frozen=True)
class RunStatus:
    """A run's Flower status, e.g. ``finished`` / ``completed``."""

    status: str
    sub_status: str
    details: str

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def ok(self) -> bool:
        return self.finished and self.sub_status == "completed"


def _flower_error(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    details = getattr(exc, "public_details", None)
    return f"[flower {code}] {exc}{f' ({details})' if details else ''}" if code else str(exc)


class ControlClient:
    """A TLS client of one SuperLink's Control API."""

    def __init__(self, address: str, ca_file: Path, flwr_home: Path) -> None:
        from flwr.cli.typing import SuperLinkConnection
        from flwr.cli.utils import init_http_client_from_connection

        # Flower keeps CLI credentials under FLWR_HOME; ours stay inside the coordinator state.
        flwr_home.mkdir(parents=True, exist_ok=True)
        os.environ["FLWR_HOME"] = str(flwr_home)
        conn = SuperLinkConnection(
            name="veilfed", address=address, root_certificates=str(Path(ca_file).absolute())
        )
        with contextlib.redirect_stdout(None):  # Flower prints "Using SuperLink: ..." here
            self._client = init_http_client_from_connection(conn)
        self.address = address

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def registered_keys(self) -> dict[bytes, int]:
        """Public key (Flower's bytes form) -> node id of every registered, not deleted node."""
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._client.ListNodes(ListNodesRequest())
        return {
            bytes(n.public_key): int(n.node_id)
            for n in res.nodes_info
            if n.status != "unregistered"
        }

    def online_nodes(self) -> set[int]:
        """Ids of the registered nodes that are connected now."""
        from flwr.proto.control_pb2 import ListNodesRequest

        res = self._client.ListNodes(ListNodesRequest())
        return {int(n.node_id) for n in res.nodes_info if n.status == "online"}

    def register_nodes(self, keys: dict[str, bytes]) -> dict[str, int]:
        """Register each node's OpenSSH public key (idempotent); name -> node id."""
        from cryptography.hazmat.primitives import serialization
        from flwr.proto.control_pb2 import RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        known = self.registered_keys()
        ids: dict[str, int] = {}
        for name, line in keys.items():
            raw = public_key_to_bytes(serialization.load_ssh_public_key(line))
            if raw in known:
                ids[name] = known[raw]
                continue
            try:
                res = self._client.RegisterNode(RegisterNodeRequest(public_key=raw, name=name))
            except Exception as exc:  # Flower raises FlowerError subclasses and transport errors
                raise UsageError(
                    f"--auth-keys {name}.pub: SuperLink refused to register it "
                    f"({_flower_error(exc)})"
                ) from None
            ids[name] = int(res.node_id)
        return ids

    def start_run(self, app_dir: Path, signing_key: Ed25519PrivateKey | None) -> int:
        """Build the FAB from ``app_dir``, sign it, and start a run; its run id.

        The signature travels as the run's one config override (``app-signature``), which nodes
        check before Flower runs any of the bundle; ``None`` submits it unsigned (nodes refuse
        it: only for tests of that refusal).
        """
        import hashlib

        from flwr.cli.build import build_fab_from_disk
        from flwr.common.serde import fab_to_proto, user_config_to_proto
        from flwr.proto.control_pb2 import StartRunRequest
        from flwr.supercore.fab import Fab

        fab_bytes = build_fab_from_disk(app_dir)
        fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
        overrides = {} if signing_key is None else {SIGNATURE_KEY: sign_fab(fab_bytes, signing_key)}
        req = StartRunRequest(
            fab=fab_to_proto(fab),
            override_config=user_config_to_proto(overrides),
            federation="",
        )
        try:
            res = self._client.StartRun(req)
        except Exception as exc:
            raise UsageError(
                f"SuperLink {self.address} refused the run ({_flower_error(exc)})"
            ) from None
        if not res.HasField("run_id"):
            raise UsageError(f"SuperLink {self.address} did not start the run")
        return int(res.run_id)

    def stream_logs(self, run_id: int, sink: Callable[[str], None]) -> None:
        """Pass the ServerApp's log to ``sink`` until the run finishes (blocking)."""
        from flwr.proto.control_pb2 import StreamLogsRequest

        for res in self._client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0)):
            for line in res.log_output.splitlines():
                if line.strip():
                    sink(line)

    def run_status(self, run_id: int) -> RunStatus:
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        run = res.run_dict[run_id]
        return RunStatus(run.status.status, run.status.sub_status, run.status.details)

    def stop_run(self, run_id: int) -> None:
        from flwr.proto.control_pb2 import StopRunRequest

        with contextlib.suppress(Exception):
            self._client.StopRun(StopRunRequest(run_id=run_id))
