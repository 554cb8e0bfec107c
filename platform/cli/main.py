"""Entry point of the ``veilfed`` console script: registers each command group."""

from __future__ import annotations

import importlib
import os

import typer

# MLflow draws a progress bar on stderr for each model it downloads; a command's output is its own.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(
    name="veilfed",
    help="Federated, privacy-preserving training of multimodal video models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (module under veilfed.cli, group name or None for a top-level command module, help)
_GROUPS: list[tuple[str, str | None, str]] = [
    ("data", "data", "Synthetic world, real-video ingestion, encrypted store, shard bundles."),
    ("audit", "audit", "Verify a run's signed ε claims (veilfed audit RUN_ID); canary audit."),
    ("keys", "keys", "Fernet key files and store key rotation."),
    ("he", "he", "CKKS keys for secure aggregation: secret (clients) and public (coordinator)."),
    ("simulate", None, "Federated DP simulation on Ray."),
    ("certs", "certs", "CA, coordinator TLS certificate and node auth keys for deployment."),
    ("coordinator", "coordinator", "Run the SuperLink and the veilfed ServerApp (deployment)."),
    ("node", "node", "Run a SuperNode with the veilfed ClientApp on its shard (deployment)."),
    ("model", "model", "Model registries; Opacus check of every model combination."),
    ("train", None, "Centralized training (DP-SGD optional)."),
    ("tune", None, "Hyperparameter search (Optuna) on the public synthetic world."),
    ("predict", None, "Run a trained model on videos: per-window and per-video results."),
    ("evaluate", None, "Score a trained model on held-out clips, clean or under attack."),
    ("explain", None, "Attribute a trained model's decision to frames, regions and modalities."),
]

for _module, _name, _help in _GROUPS:
    _mod = importlib.import_module(f"veilfed.cli.{_module}")
    if _name is None:
        _mod.register(app)
    else:
        app.add_typer(_mod.app, name=_name, help=_help)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
