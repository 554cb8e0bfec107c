"""Encrypted FedAvg equals plaintext FedAvg through the real simulation (Flower engine on Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from testkit.fed import write_config
from typer.testing import CliRunner

from veilfed.cli.main import app

# CKKS noise of one averaged value is ≤ 3.1e-6 (docs/he.md); round 2 trains from that slightly
# different global model, so the final weights may differ by a small multiple of it.
TOLERANCE = 1e-4


def _simulate(tmp_path: Path, name: str, *flags: str) -> dict:
    # shadow copies (he/max_abs_error) are a test-only setting; 2 of 3 clients a round need a
    # lower contributor floor than the default 3.
    extra = "[he]\nshadow = true\nmin_contributors = 2\n"
    cfg = write_config(tmp_path, clients=3, rounds=2, fraction=0.67, extra=extra)
    out = tmp_path / f"{name}.json"
    result = CliRunner().invoke(
        app, ["simulate", "--config", str(cfg), "--summary-json", str(out), *flags]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()) | {"output": result.output}


@pytest.mark.slow  # 49 s; HE on Ray also runs in make demo, real-node DP + HE in tests/deployment
@pytest.mark.integration
def test_encrypted_simulation_matches_plaintext_on_ray(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from veilfed.coordinator import checkpoint
    from veilfed.crypto.he import decrypt_average
    from veilfed.crypto.he_keys import load_context
    from veilfed.crypto.he_packing import flatten
    from veilfed.federation.settings import RunSettings
    from veilfed.privacy.noise import INSECURE_SEED_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # Comparing two runs' models needs the same DP noise in both: test-only replayable noise.
    monkeypatch.setenv(INSECURE_SEED_ENV, "7")
    he = _simulate(tmp_path, "he", "--he")
    plain = _simulate(tmp_path, "plain")

    assert he["he"]["enabled"] and not plain["he"]["enabled"]
    assert he["he"]["ciphertext_bytes"] > 4 * he["he"]["plaintext_bytes"] > 0
    assert 0 <= he["he"]["max_abs_error"] < 1e-5
    assert "HE secure aggregation" in he["output"]
    # same seed, same clients, same DP noise: the models agree up to CKKS noise
    settings = RunSettings.load(he["run_dir"])
    secret = load_context(settings.he.secret_path, require_secret=True)
    he_flat = decrypt_average(secret, checkpoint.load(he["run_dir"]).he_global).average
    plain_flat, _ = flatten(list(checkpoint.load(plain["run_dir"]).arrays.values()))
    assert np.max(np.abs(he_flat - plain_flat)) < TOLERANCE
    # no plaintext model from the coordinator; the first client exported the one it decrypts
    from veilfed.coordinator.summary import load_summary
    from veilfed.model import load, numpy_state

    assert load_summary(he["run_dir"])["model"]["final"] is None
    model = he["model"]
    assert model["encrypted"] is True and model["exported_by"] == "client-0000"
    exported = numpy_state(load(model["final"]))
    flat, _ = flatten([exported[k] for k in exported])
    assert np.max(np.abs(flat - he_flat)) < 1e-6
    assert f"final model: {model['final']}" in he["output"]
    assert he["clients"].keys() == plain["clients"].keys()
    for cid, c in he["clients"].items():
        assert c["epsilon"] == pytest.approx(plain["clients"][cid]["epsilon"], rel=1e-12)

    metrics = MlflowClient(tracking_uri=he["tracking_uri"]).get_run(he["run_id"]).data.metrics
    for name in ("he/encrypt_ms", "he/aggregate_ms", "he/decrypt_ms", "he/bytes_ratio"):
        assert metrics[name] > 0, name
    assert metrics["he/max_abs_error"] < 1e-5
