"""``model check`` internals: combinations and the per-combination Opacus check."""

from __future__ import annotations

from testkit.model import tiny

from veilfed.model.check import combinations, run_checks


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
