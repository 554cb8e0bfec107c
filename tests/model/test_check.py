"""``model check`` internals: combinations and the per-combination Opacus check."""

from __future__ import annotations

import pytest
from testkit.model import KIND_TASKS, tiny

from veilfed.model.check import check_one, combinations, run_checks


def test_default_combinations_cover_every_fusion() -> None:
    labels = [label for label, _ in combinations(tiny(), everything=False)]
    assert len(labels) == 5
    assert all(label.startswith("conv2p1d+logmel_conv+text_transformer/") for label in labels)


def test_all_combinations_cross_encoders() -> None:
    labels = [label for label, _ in combinations(tiny(), everything=True)]
    assert "r2plus1d_18+logmel_transformer+text_transformer/vote" in labels
    assert len(labels) == 2 * 2 * 1 * 5


def test_check_passes_and_reports_failures() -> None:
    ok = run_checks(
        tiny(encoders={"audio": "logmel_conv", "text": "text_transformer"}, tasks={"action": 1.0}),
        everything=False,
    )
    assert ok and all(r.ok for r in ok), [r.error for r in ok if not r.ok]
    bad = run_checks(tiny(encoder_kwargs={"video": {"dim": 33}}), everything=False)
    assert bad and not any(r.ok for r in bad)


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_one_task_of_each_kind_takes_a_dp_step(kind: str) -> None:
    """A model of one declared task builds no module that task leaves without a gradient
    (Opacus refuses one): a classification-only model has no grid conditioning, no decoder."""
    name, value = KIND_TASKS[kind]
    assert check_one(tiny(tasks={name: value}, pixel_dim=8), frames=4, size=16) > 0
