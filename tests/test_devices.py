"""``--device``: names resolve on this machine, batches follow the model, results come back to
the CPU; the CUDA path runs wherever torch sees a GPU."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest
import torch

from veilfed.devices import model_device, resolve, to_device
from veilfed.errors import UsageError

CUDA = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[1]


def test_names_resolve_and_a_missing_gpu_is_one_line(monkeypatch) -> None:
    assert resolve("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"^--device cuda: torch sees no CUDA device"):
        resolve("cuda")
    with pytest.raises(UsageError, match=r"^train.device 'gpu': use one of auto, cpu, cuda$"):
        resolve("gpu", "train.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto").type == "cuda" and resolve("cuda").type == "cuda"


def test_nested_batches_move_and_other_values_stay() -> None:
    Pair = namedtuple("Pair", "a b")
    meta = torch.device("meta")  # a device every machine has: tensors move, nothing computes
    batch = {"video": torch.ones(2, 3), "targets": {"boxes": [torch.zeros(1)]}, "ids": ["a", "b"],
             "pair": Pair(torch.ones(1), 3), "t": (torch.ones(1),)}  # fmt: skip
    moved = to_device(batch, meta)
    assert moved["video"].device == meta and moved["targets"]["boxes"][0].device == meta
    assert moved["ids"] == ["a", "b"] and isinstance(moved["pair"], Pair)
    assert moved["pair"].a.device == meta and moved["pair"].b == 3
    assert isinstance(moved["t"], tuple) and moved["t"][0].device == meta
    assert to_device(batch["video"], torch.device("cpu")) is batch["video"]  # no copy
    assert model_device(torch.nn.Linear(2, 2).to(meta)) == meta
    assert model_device(object()) == torch.device("cpu")  # e.g. an ONNX Runtime session


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_model_on_the_gpu_scores_as_on_the_cpu() -> None:
    from veilfed.centralized import baseline_batches, loaders
    from veilfed.config import load_config
    from veilfed.metrics import fit_baselines
    from veilfed.model import create_model, score

    cfg = load_config(ROOT / "experiments" / "tiny.toml")
    train, test, _ = loaders(cfg)
    model = create_model(cfg)
    baselines = fit_baselines(model.task_specs, baseline_batches(train))
    cpu = score(model, test, baselines, bootstrap=0)
    gpu = score(model.to("cuda"), test, baselines, bootstrap=0)
    for task, values in cpu.metrics.items():
        for name, value in values.items():
            assert gpu.metrics[task][name] == pytest.approx(value, abs=1e-4), (task, name)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_dp_training_runs_on_the_gpu_and_its_model_loads_on_the_cpu(tmp_path, monkeypatch) -> None:
    from veilfed.centralized import run
    from veilfed.config import load_config
    from veilfed.model.saved import load_with_input

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config(ROOT / "experiments" / "tiny.toml", {"train": {"device": "cuda"}})
    assert cfg.privacy.enabled  # DP-SGD: Opacus and the OS-entropy noise on the GPU
    summary = run(cfg)
    assert summary["device"] == "cuda" and summary["clients"]["centralized"]["epsilon"] > 0
    model, _ = load_with_input(summary["model"]["final"])
    assert model_device(model).type == "cpu"
