"""Every registered fusion runs with each modality missing, and a missing modality has no
influence."""

from __future__ import annotations

import pytest
import torch
from testkit.model import make_batch, tiny

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.model import FUSIONS, create_model

FUSION_NAMES = ("concat", "vote", "gated", "cross_attention", "transformer")


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict):
        return all(_same(a[k], b[k]) for k in a)
    return torch.allclose(a, b, atol=1e-5)


def test_all_five_fusions_registered() -> None:
    assert set(FUSION_NAMES) <= set(FUSIONS.names())


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("missing", schema.MODALITIES)
def test_missing_modality_is_ignored(fusion: str, missing: str) -> None:
    torch.manual_seed(0)
    model = create_model(tiny(fusion=fusion)).eval()
    col = schema.MODALITIES.index(missing)
    a, b = make_batch(3, seed=1), make_batch(3, seed=1)
    b[missing] = make_batch(3, seed=2)[missing]  # different content in the absent modality
    a["modality_mask"][1:, col] = False  # sample 0 keeps it: mixed presence within the batch
    b["modality_mask"][1:, col] = False
    with torch.no_grad():
        out_a, out_b = model(a), model(b)
        total, _ = model.loss(out_a, a)
    assert torch.isfinite(total)
    for task in out_a:
        sa = (
            {k: v[1:] for k, v in out_a[task].items()}
            if isinstance(out_a[task], dict)
            else (out_a[task][1:])
        )
        sb = (
            {k: v[1:] for k, v in out_b[task].items()}
            if isinstance(out_b[task], dict)
            else (out_b[task][1:])
        )
        assert _same(sa, sb), f"{fusion}: task {task} depends on missing {missing}"
    # sample 0 still has the modality, so its outputs must depend on it
    assert not all(
        _same(
            out_a[t][0] if not isinstance(out_a[t], dict) else out_a[t]["boxes"][0],
            out_b[t][0] if not isinstance(out_b[t], dict) else out_b[t]["boxes"][0],
        )
        for t in out_a
    )


def test_gated_weights_are_per_sample_and_skip_missing() -> None:
    model = create_model(tiny(fusion="gated")).eval()
    batch = make_batch(3)
    batch["modality_mask"][0, 1] = False
    model(batch)
    w = model.attention_maps()["modality_weights"]
    assert w.shape == (3, 3)
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert w[0, 1] == 0 and (w[1:] > 0).all()


def test_vote_combines_per_modality_heads() -> None:
    model = create_model(tiny(fusion="vote", tasks={"action": 1.0}))
    assert len(model.head_sets) == 3  # one head set per modality
    batch = make_batch(2)
    batch["modality_mask"][:, 0] = False
    model(batch)
    w = model.attention_maps()["modality_weights"]
    assert (w[:, 0] == 0).all() and torch.allclose(w.sum(1), torch.ones(2))


@pytest.mark.parametrize("fusion,key", [("cross_attention", "cross/text"), ("transformer", "self")])
def test_attention_weights_retrievable(fusion: str, key: str) -> None:
    model = create_model(tiny(fusion=fusion)).eval()
    batch = make_batch(2)
    model(batch)
    att = model.attention_maps()[key]
    assert att.shape[0] == 2 and att.dim() == 3
    assert torch.allclose(att.sum(-1)[0, :1], torch.ones(1), atol=1e-5)


def test_cross_attention_needs_video() -> None:
    with pytest.raises(UsageError, match="video"):
        create_model(
            tiny(
                fusion="cross_attention",
                encoders={"audio": "logmel_conv"},
                tasks={"sentiment": 1.0},
            )
        )
