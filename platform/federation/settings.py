"""One run's resolved settings (:class:`RunSettings`), as saved with the run and sent to clients.

Contract. ``RunSettings`` is resolved once by whoever starts the run (``veilfed simulate``, the
ServerApp under ``flwr run``, ``veilfed coordinator start``) and written to
``<run_dir>/settings.json`` (:data:`SETTINGS_FILE`), so a resumed run continues with exactly the
settings it started with. The coordinator sends the same JSON in every message
(``veilfed.federation.keys.SETTINGS_KEY``), so a node needs none of the coordinator's files.
Its fields are in ``docs/contracts.md`` ("Run settings").

Invariants:

- ``to_json`` and ``from_json`` round-trip: JSON keys are the dataclass field names, nested
  objects ``federated``, ``privacy`` and ``he``; an unbounded ε is the JSON constant
  ``Infinity``;
- ``from_json`` validates as strictly as the coordinator's own config load (a node runs whatever
  the settings say): an unknown field, a wrong type or a value out of range is a one-line
  ``UsageError`` naming the field;
- the aggregation rule is named here but registered by the coordinator, which checks the name
  against its registry (``veilfed.coordinator.strategies``); every other field is checked by its
  section (``veilfed.federation.sections``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from veilfed.errors import UsageError
from veilfed.federation.sections import ClientPrivacy, FederatedConfig, HEConfig, typed_fields
from veilfed.io import write_text_atomic

SETTINGS_FILE = "settings.json"  # in the run directory


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs, resolved once; clients and a resumed coordinator reload it.

    ``store`` and ``key_file`` name the simulation's encrypted store (empty on real nodes, which
    bring their own); ``config`` is the experiment config (model, data, train sections) with
    overrides applied; ``extra`` holds run-specific additions a reader may ignore.
    """

    run_id: str
    run_dir: str
    experiment: str
    config: dict[str, Any]  # the experiment config (model, data, train sections), overrides applied
    store: str
    key_file: str
    seed: int
    federated: FederatedConfig
    privacy: ClientPrivacy
    tracking_uri: str
    extra: dict[str, Any] = field(default_factory=dict)
    he: HEConfig = field(default_factory=HEConfig)

    def to_json(self) -> str:
        """The settings as JSON: saved with the run and sent in every message to the clients."""
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=_jsonable)

    @classmethod
    def from_json(cls, text: str, where: str = "run settings") -> RunSettings:
        """Parse and validate settings as the coordinator's own config load does: a node runs
        whatever these say, so ranges are checked here too (one-line ``UsageError``)."""
        try:
            data = json.loads(text, parse_constant=_constant)
            data["federated"] = FederatedConfig.from_dict(data["federated"], f"{where}: federated")
            data["privacy"] = ClientPrivacy.from_dict(data["privacy"], f"{where}: privacy")
            data["he"] = HEConfig(**typed_fields(HEConfig, data.get("he", {}), f"{where}: he"))
            settings = cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"{where}: not veilfed run settings ({exc})") from None
        settings.privacy.validate(1, f"{where}: privacy")  # δ against each client's n: on use
        return settings

    def save(self) -> Path:
        path = Path(self.run_dir) / SETTINGS_FILE
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> RunSettings:
        path = Path(run_dir) / SETTINGS_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read run settings ({exc})") from None
        return cls.from_json(text, str(path))


def _jsonable(value: Any) -> Any:
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _constant(name: str) -> float:
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]
