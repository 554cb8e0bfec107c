"""HE runs: the coordinator never decrypts nor stores a plaintext model; a key holder exports it."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from testkit.fed import LocalGrid, write_config
from typer.testing import CliRunner

import veilfed.crypto.he as he
from veilfed.cli.main import app as cli
from veilfed.clients.export import export_model
from veilfed.clients.secure import global_model
from veilfed.coordinator import checkpoint
from veilfed.coordinator.prepare import prepare
from veilfed.coordinator.rounds import Coordinator
from veilfed.coordinator.summary import finish
from veilfed.crypto.he_keys import load_context
from veilfed.crypto.he_update import EncryptedUpdate
from veilfed.errors import CheckFailed, UsageError
from veilfed.federation.keys import GLOBAL_KEY, ROUND_KEY, SETTINGS_KEY
from veilfed.model import load, numpy_state

CLIENTS_SRC = str(Path(he.__file__).resolve().parents[2] / "clients")
FLOOR_2 = "[he]\nmin_contributors = 2\n"


@pytest.fixture(scope="module")
def he_run(tmp_path_factory):
    """A finished 2-client, 2-round HE run, with every decryption recorded (who asked)."""
    tmp = tmp_path_factory.mktemp("he")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    calls: list[bool] = []  # per decryption: did it run inside the clients' code?
    real = he.decrypt_average

    def spy(*args, **kwargs):
        calls.append(any(f.filename.startswith(CLIENTS_SRC) for f in inspect.stack()))
        return real(*args, **kwargs)

    mp.setattr(he, "decrypt_average", spy)
    mp.setattr("veilfed.clients.secure.decrypt_average", spy)
    cfg = write_config(tmp, clients=2, rounds=2, extra=FLOOR_2)
    settings, tracker = prepare(cfg, {}, None, None, None, None, tmp / "runs", he=True)
    Coordinator(LocalGrid(2), settings, tracker).run()
    during_rounds = list(calls)
    calls.clear()
    summary = finish(settings, tracker, 1.0)
    at_finish = list(calls)
    mp.undo()
    roots = [Path(settings.run_dir), tmp / "mlartifacts", tmp / "mlflow.db"]
    files = [p for r in roots for p in ([r] if r.is_file() else r.rglob("*")) if p.is_file()]
    yield {
        "written": {p: p.read_bytes() for p in files},  # all the coordinator's side holds
        "tmp": tmp,
        "settings": settings,
        "tracker": tracker,
        "summary": summary,
        "rounds_calls": during_rounds,
        "finish_calls": at_finish,
    }


@pytest.fixture(autouse=True)
def _run_store(he_run, monkeypatch):
    """Every test here reads the HE run's MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{he_run['tmp'] / 'mlflow.db'}")


def _client_decrypts(settings, blob: bytes) -> dict[str, np.ndarray]:
    """The global model a client holds when an evaluate message carries ``blob``."""
    config = ConfigRecord({SETTINGS_KEY: settings.to_json(), GLOBAL_KEY: blob, ROUND_KEY: 2})
    msg = Message(
        RecordDict({"arrays": ArrayRecord(), "config": config}),
        message_type=MessageType.EVALUATE,
        dst_node_id=1,
    )
    arrays, _ = global_model(settings, settings.he.secret_path, msg, 2)
    return arrays


def test_coordinator_never_decrypts_and_logs_no_plaintext_model(he_run):
    assert he_run["rounds_calls"] and all(he_run["rounds_calls"])  # only ever the clients
    assert he_run["finish_calls"] == []  # the end of the run decrypts nothing
    entry = he_run["summary"]["model"]
    assert entry["encrypted"] is True and entry["final"] is None and entry["best"] is None
    tracker = he_run["tracker"]
    exp = tracker.client.get_run(tracker.run_id).info.experiment_id
    assert tracker.client.search_logged_models(experiment_ids=[exp]) == []


def _needles(settings) -> list[bytes]:
    """Byte runs of the trained global model (float32 and float64) that the public initial
    weights do not have."""
    ckpt = checkpoint.load(settings.run_dir)
    trained = _client_decrypts(settings, ckpt.he_global)
    out = []
    for name, value in trained.items():
        flat = np.asarray(value, dtype=np.float32).ravel()
        if flat.size >= 8 and not np.allclose(flat, np.asarray(ckpt.arrays[name]).ravel()):
            out += [flat[:8].tobytes(), flat[-8:].tobytes()]
            out.append(np.asarray(flat[:8], dtype=np.float64).tobytes())
    assert len(out) > 10
    return out


def _holding(files: dict[Path, bytes], needles: list[bytes]) -> list[Path]:
    return [p for p, data in files.items() if any(n in data for n in needles)]


def test_run_dir_and_mlflow_hold_no_plaintext_weights(he_run):
    """Attack: look for the trained weights' bytes in everything the coordinator's side wrote
    by the end of the run (checkpoint, summary, encrypted model, MLflow store and artifacts)."""
    assert len(he_run["written"]) > 5
    assert _holding(he_run["written"], _needles(he_run["settings"])) == []


def test_key_holder_exports_the_model_the_clients_use(he_run):
    settings, tracker = he_run["settings"], he_run["tracker"]
    ckpt = checkpoint.load(settings.run_dir)
    uris = export_model(settings.run_dir, settings.he.secret_path)
    assert set(uris) == {"final", "best"}
    # the scan above would see them: the key holder's export put them into the artifacts
    artifacts = {p: p.read_bytes() for p in (he_run["tmp"] / "mlartifacts").rglob("*.pt")}
    assert _holding(artifacts, _needles(settings))
    final = numpy_state(load(uris["final"]))
    client = _client_decrypts(settings, ckpt.he_global)
    secret = load_context(settings.he.secret_path, require_secret=True)
    independent = he.decrypt_average(secret, EncryptedUpdate.from_bytes(ckpt.he_global)).average
    flat = np.concatenate([np.asarray(final[k], np.float64).ravel() for k in client])
    assert np.max(np.abs(flat - independent)) < 1e-6
    for k, v in client.items():
        np.testing.assert_array_equal(final[k], np.asarray(v, dtype=final[k].dtype))
    best_round = he_run["summary"]["model"]["best_round"]
    best = numpy_state(load(f"runs:/{tracker.run_id}/model-best"))
    expected = (
        _client_decrypts(settings, ckpt.best["he_global"])
        if ckpt.best["he_global"] is not None
        else ckpt.arrays
    )
    assert best_round == ckpt.best["round"]
    for k, v in expected.items():
        np.testing.assert_array_equal(best[k], np.asarray(v, dtype=best[k].dtype))


def test_export_refuses_below_the_floor_and_without_a_model(he_run, tmp_path):
    settings = he_run["settings"]
    with pytest.raises(CheckFailed, match="refusing to decrypt"):
        export_model(settings.run_dir, settings.he.secret_path, min_contributors=3)
    (tmp_path / "settings.json").write_text(Path(settings.run_dir, "settings.json").read_text())
    with pytest.raises(UsageError, match="no encrypted model; export after the HE run"):
        export_model(tmp_path, settings.he.secret_path)


def test_node_export_model_command(he_run):
    settings = he_run["settings"]
    args = ["node", "export-model", "--run-dir", settings.run_dir]
    res = CliRunner().invoke(
        cli,
        [*args, "--he-context", settings.he.secret_path, "--he-min-contributors", "2", "--json"],
    )
    assert res.exit_code == 0, res.output
    uris = json.loads(res.stdout)
    assert uris["final"].startswith("models:/") and load(uris["best"]) is not None
    bad = CliRunner().invoke(cli, [*args[:3], "/no/run", "--he-context", "x.ctx"])
    assert bad.exit_code == 2
    assert bad.stderr.count("\n") == 1 and "/no/run/settings.json" in bad.stderr
