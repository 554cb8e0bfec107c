"""Bad input to `coordinator start` / `node start`: exit 2, one line naming the cause, no hang."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veilfed.crypto import certs
from veilfed.launch.net import free_port

VEILFED = [sys.executable, "-m", "veilfed.cli.main"]


def run(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str, float]:
    start = time.monotonic()
    res = subprocess.run(
        [*VEILFED, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    return res.returncode, res.stderr, time.monotonic() - start


def error_line(code: int, stderr: str) -> str:
    """The contract: exit 2 and the last stderr line is the one-line reason, no traceback."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text('name = "x"\n')
    return path


def coordinator(trust_dir: Path, config: Path, address: str) -> list[str]:
    return [
        "coordinator", "start", "--address", address, "--certs", str(trust_dir),
        "--auth-keys", str(trust_dir / "auth-keys"), "--config", str(config),
        "--state", str(config.parent / "state"), "--control-port", str(free_port()),
    ]  # fmt: skip


def test_coordinator_port_in_use(trust: certs.CertBundle, config: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, err, _ = run(coordinator(trust.out, config, f"127.0.0.1:{port}"), config.parent)
    assert f"port {port} is in use" in error_line(code, err)


def test_coordinator_expired_certificate(tmp_path: Path, config: Path) -> None:
    old = certs.create_bundle(
        tmp_path / "old", 1, days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    code, err, _ = run(coordinator(old.out, config, f"127.0.0.1:{free_port()}"), tmp_path)
    assert "certificate expired on 2020-01-02" in error_line(code, err)


def test_coordinator_wrong_ca(trust: certs.CertBundle, tmp_path: Path, config: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(trust.out, mixed)
    other = certs.create_bundle(tmp_path / "other", 1)
    shutil.copy(other.ca_cert, mixed / "ca.pem")
    code, err, _ = run(coordinator(mixed, config, f"127.0.0.1:{free_port()}"), tmp_path)
    assert "wrong CA" in error_line(code, err)


def test_coordinator_missing_config(trust: certs.CertBundle, tmp_path: Path) -> None:
    cfg = tmp_path / "nope.toml"
    code, err, _ = run(coordinator(trust.out, cfg, f"127.0.0.1:{free_port()}"), tmp_path)
    assert "nope.toml: no such config file; check --config" in error_line(code, err)


def node(shard: Path, key: Path, trust_dir: Path, auth_key: Path, superlink: str) -> list[str]:
    return [
        "node", "start", "--superlink", superlink, "--shard", str(shard), "--key-file", str(key),
        "--certs", str(trust_dir), "--auth-key", str(auth_key), "--port", str(free_port()),
        "--connect-tries", "3", "--state", str(shard.parent / "node-state"), "--budget", "8",
    ]  # fmt: skip


def test_node_shard_key_does_not_open_bundle(trust: certs.CertBundle, shard, tmp_path) -> None:
    bundle, _, wrong_key = shard
    args = node(bundle, wrong_key, trust.out, trust.node_key("client-0000"), "127.0.0.1:1")
    code, err, _ = run(args, tmp_path)
    line = error_line(code, err)
    assert "c0.vfs" in line and "bundle is for client client-0000" in line


def test_node_unreachable_superlink_gives_up(trust: certs.CertBundle, shard, tmp_path) -> None:
    bundle, key, _ = shard
    port = free_port()
    args = node(bundle, key, trust.out, trust.node_key("client-0000"), f"127.0.0.1:{port}")
    code, err, elapsed = run(args, tmp_path, timeout=30)
    line = error_line(code, err)
    assert f"127.0.0.1:{port}: SuperLink unreachable after 3 tries" in line
    assert err.count("retry") == 2  # back-off logged: 0.5s, then 1s
    assert elapsed < 20


def test_node_auth_key_readable_by_others(trust: certs.CertBundle, shard, tmp_path) -> None:
    bundle, key, _ = shard
    loose = tmp_path / "loose.key"
    loose.write_bytes(trust.node_key("client-0000").read_bytes())
    loose.chmod(0o644)
    code, err, _ = run(node(bundle, key, trust.out, loose, "127.0.0.1:1"), tmp_path)
    assert "chmod 600" in error_line(code, err)


def test_node_expired_ca(tmp_path: Path, shard) -> None:
    bundle, key, _ = shard
    old = certs.create_bundle(
        tmp_path / "old", 1, days=1, not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    )
    code, err, _ = run(node(bundle, key, old.out, old.node_key("client-0000"), "h:1"), tmp_path)
    assert "ca.pem: certificate expired" in error_line(code, err)


def test_node_local_port_in_use(trust: certs.CertBundle, shard, tmp_path) -> None:
    bundle, key, _ = shard
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = node(bundle, key, trust.out, trust.node_key("client-0000"), "127.0.0.1:1")
        args[args.index("--port") + 1] = str(port)
        code, err, _ = run(args, tmp_path)
    assert f"--port 127.0.0.1:{port}: port {port} is in use" in error_line(code, err)


def test_coordinator_resume_unknown_run(trust: certs.CertBundle, config: Path) -> None:
    args = [*coordinator(trust.out, config, f"127.0.0.1:{free_port()}"), "--resume", "abc123"]
    code, err, _ = run(args, config.parent)
    line = error_line(code, err)
    assert "--resume abc123: no run state in" in line and "same --state" in line


def test_node_he_context_must_be_the_secret_one(trust: certs.CertBundle, shard, tmp_path) -> None:
    bundle, key, _ = shard
    res = subprocess.run(
        [*VEILFED, "he", "keygen", "--out", str(tmp_path / "he")], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    args = node(bundle, key, trust.out, trust.node_key("client-0000"), "127.0.0.1:1")
    code, err, _ = run([*args, "--he-context", str(tmp_path / "he" / "public.ctx")], tmp_path)
    assert "public.ctx: public HE context has no secret key" in error_line(code, err)


def test_coordinator_refuses_the_he_secret_context(trust: certs.CertBundle, config: Path) -> None:
    """The coordinator must never hold the HE secret key: given secret.ctx it refuses to start."""
    res = subprocess.run(
        [*VEILFED, "he", "keygen", "--out", str(config.parent / "he")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    args = coordinator(trust.out, config, f"127.0.0.1:{free_port()}")
    code, err, _ = run(
        [*args, "--he-context", str(config.parent / "he" / "secret.ctx")], config.parent
    )
    line = error_line(code, err)
    assert line.startswith("error: --he-context") and "holds the HE secret key" in line


def test_coordinator_he_config_needs_the_public_context(
    trust: certs.CertBundle, config: Path
) -> None:
    config.write_text('name = "x"\n[he]\nenabled = true\n')
    code, err, _ = run(coordinator(trust.out, config, f"127.0.0.1:{free_port()}"), config.parent)
    line = error_line(code, err)
    assert "[he] enabled needs --he-context public.ctx" in line


def test_node_import_failure_keeps_the_previous_store(
    trust: certs.CertBundle, shard, tmp_path
) -> None:
    """A bundle that does not open leaves the node store of the last good import in place."""
    from veilfed.crypto.keys import read_key_file
    from veilfed.data.store import EncryptedStore
    from veilfed.errors import UsageError
    from veilfed.launch.start_node import import_shard, node_store

    bundle, key, wrong_key = shard
    state = tmp_path / "state"
    assert import_shard(bundle, key, state) == "client-0000"
    assert import_shard(bundle, key, state) == "client-0000"  # a restart re-imports in place
    with pytest.raises(UsageError, match="bundle is for client client-0000"):
        import_shard(bundle, wrong_key, state)
    store = EncryptedStore.open(node_store(state), read_key_file(key))
    assert sorted(store.ids()) == ["clip-0", "clip-1"]
    assert sorted(p.name for p in node_store(state).parent.iterdir()) == ["store"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--budget", "-1", "--budget -1: use a positive epsilon"),
        ("--budget", "nan", "--budget nan: use a positive epsilon"),
        ("--max-delta", "2", "--max-delta 2: use a delta in (0, 1)"),
        ("--accountants", "rdp,gdp", "gdp is an approximation, not a privacy bound"),
    ],
)
def test_node_privacy_policy_options_are_checked(
    flag: str, value: str, message: str, trust: certs.CertBundle, shard, tmp_path
) -> None:
    bundle, key, _ = shard
    args = node(bundle, key, trust.out, trust.node_key("client-0000"), "127.0.0.1:1")
    code, err, _ = run([*args, flag, value], tmp_path)
    assert message in error_line(code, err)


def test_a_node_that_may_train_with_dp_needs_its_own_budget(
    trust: certs.CertBundle, shard, tmp_path
) -> None:
    """Without --budget a DP run's coordinator would set the node's cap: refused at start,
    before anything else is checked; a node that trains only without DP may omit it."""
    bundle, key, _ = shard
    args = node(bundle, key, trust.out, trust.node_key("client-0000"), "bad address")
    args = args[: args.index("--budget")]
    code, err, _ = run(args, tmp_path)
    line = error_line(code, err)
    assert line.startswith("error: --budget is required: the most epsilon this node's shard")
    code, err, _ = run([*args, "--allow-no-dp"], tmp_path)
    assert "--budget" not in error_line(code, err)  # past the budget check: the address


@pytest.mark.parametrize("problem", ["missing", "readable", "not-ed25519"])
def test_coordinator_needs_its_private_app_signing_key(
    problem: str, trust: certs.CertBundle, tmp_path: Path, config: Path
) -> None:
    """No run leaves the coordinator unsigned: a missing, loose or wrong key stops it at start."""
    mixed = tmp_path / "mixed"
    shutil.copytree(trust.out, mixed)
    key = mixed / "app-signing.key"
    if problem == "missing":
        key.unlink()
    elif problem == "readable":
        key.chmod(0o644)
    else:
        key.write_bytes(trust.node_key("client-0000").read_bytes())  # an EC node key
        key.chmod(0o600)
    code, err, _ = run(coordinator(mixed, config, f"127.0.0.1:{free_port()}"), tmp_path)
    line = error_line(code, err)
    assert str(key) in line
    expected = {
        "missing": "app-signing key not found; check --certs",
        "readable": "chmod 600",
        "not-ed25519": "not an OpenSSH Ed25519 private key",
    }[problem]
    assert expected in line, line


def test_coordinator_control_port_must_differ_from_the_fleet_port(
    trust: certs.CertBundle, config: Path
) -> None:
    port = free_port()
    args = [*coordinator(trust.out, config, f"127.0.0.1:{port}"), "--control-port", str(port)]
    code, err, _ = run(args, config.parent)
    assert f"--control-port {port}: use a port" in error_line(code, err)


@pytest.mark.parametrize("problem", ["missing", "empty", "node-key"])
def test_node_needs_trusted_entities(
    problem: str, trust: certs.CertBundle, shard, tmp_path: Path
) -> None:
    """A node never starts without keys to check bundles against (it would run any bundle)."""
    bundle, key, _ = shard
    args = node(bundle, key, trust.out, trust.node_key("client-0000"), "127.0.0.1:1")
    trusted = tmp_path / "trusted.yaml"
    if problem == "empty":
        trusted.write_text("")
    elif problem == "node-key":
        trusted.write_text(f"k: '{(trust.auth_keys / 'client-0000.pub').read_text().strip()}'\n")
    code, err, _ = run([*args, "--trusted-entities", str(trusted)], tmp_path)
    line = error_line(code, err)
    expected = {
        "missing": "not found; check --trusted-entities",
        "empty": "no trusted entities",
        "node-key": "is not an ssh-ed25519 public key",
    }[problem]
    assert str(trusted) in line and expected in line, line
