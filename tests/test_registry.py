from __future__ import annotations

import pytest

from veilfed.errors import UsageError
from veilfed.registry import Registry


def test_build_and_errors():
    reg: Registry[object] = Registry("widget")

    @reg.register("box")
    class Box:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    assert reg.build("box", size=3).size == 3
    assert "box" in reg and reg.names() == ["box"]
    with pytest.raises(UsageError, match="unknown widget 'ball'; valid: box"):
        reg.get("ball")
    with pytest.raises(UsageError, match="widget 'box': bad arguments"):
        reg.build("box", colour="red")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("box")(Box)


def test_model_registries_fill_themselves():
    from veilfed.model import list_registries

    regs = list_registries()
    assert {"concat", "vote", "gated", "cross_attention", "transformer"} <= set(regs["fusions"])
    assert len(regs["heads"]) == 12
