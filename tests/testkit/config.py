"""Config-file helpers: the one-line error a config text gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from veilfed.config import load_config
from veilfed.errors import UsageError


def config_error(tmp_path: Path, text: str) -> str:
    """The UsageError ``exp.toml`` holding ``text`` gives, checked to be one line."""
    path = tmp_path / "exp.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    return message
