"""``--init-from`` on ``veilfed train`` and ``veilfed simulate``, and ``[model] freeze`` in
centralized training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit.fed import write_config
from typer.testing import CliRunner

from veilfed import centralized, epochs
from veilfed import train as loop
from veilfed.cli.main import app
from veilfed.config import load_config
from veilfed.model import create_model

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.toml"


def test_train_starts_from_the_weights_and_keeps_frozen_modules(tmp_path: Path, monkeypatch):
    """A DP run from saved weights with the video encoder frozen: the summary counts every
    tensor loaded, the frozen encoder ends the run exactly as the file has it, the rest moved."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.read_text().replace("[model]\n", '[model]\nfreeze = ["encoders.video"]\n'))
    cfg = load_config(path)
    torch.manual_seed(42)
    source = create_model(cfg).state_dict()
    weights = tmp_path / "start.pt"
    torch.save(source, weights)
    seen = {}
    real = loop.train_steps

    def spy(model, loader, optimizer, **kwargs):  # type: ignore[no-untyped-def]
        stats = real(model, loader, optimizer, **kwargs)
        seen["state"] = {k: v.clone() for k, v in loop.unwrap(model).state_dict().items()}
        return stats

    monkeypatch.setattr(epochs, "train_steps", spy)
    summary = centralized.run(cfg, init=weights)
    assert summary["init_from"]["loaded"] == len(source) and summary["clients"]
    end = seen["state"]
    video = [k for k in source if k.startswith("encoders.video.")]
    assert video and all(torch.equal(end[k], source[k]) for k in video)
    assert any(not torch.equal(end[k], source[k]) for k in source if k.startswith("head_sets."))


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_a_source_that_is_not_a_local_file_is_one_line(tmp_path: Path, command: str) -> None:
    cfg = TINY if command == "train" else write_config(tmp_path)
    result = CliRunner().invoke(
        app, [command, "--config", str(cfg), "--init-from", "runs:/0123/model"]
    )
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "runs:/0123/model" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run
