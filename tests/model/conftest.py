from __future__ import annotations

from typing import Any

import pytest
from testkit.model import make_batch


@pytest.fixture
def batch() -> dict[str, Any]:
    return make_batch()
