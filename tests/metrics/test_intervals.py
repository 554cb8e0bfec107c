"""Per-clip evidence and the paired bootstrap: compute() keeps its dataset-level definition, a
resample equals a dataset of the drawn clips, intervals behave as intervals should."""

from __future__ import annotations

import math

import pytest
import torch

from veilfed.data import schema
from veilfed.errors import UsageError
from veilfed.metrics import build_metric
from veilfed.metrics import functional as M
from veilfed.metrics.intervals import client_bootstrap, paired_bootstrap

C = len(schema.OBJECT_CLASSES)
B, T, H, W, L, P = 3, 2, 8, 8, 7, 4


def _targets(g: torch.Generator) -> dict[str, torch.Tensor]:
    xy = torch.rand(B, T, 2, 2, generator=g) * 0.5
    return {
        "action": torch.randint(0, len(schema.ACTIONS), (B,), generator=g),
        "sentiment": torch.randint(0, len(schema.SENTIMENTS), (B,), generator=g),
        "moderation": torch.randint(0, 2, (B,), generator=g).float(),
        "quality": torch.rand(B, generator=g),
        "boxes": torch.cat([xy, xy + 0.3], -1),
        "box_classes": torch.randint(-1, C, (B, T, 2), generator=g),
        "segmentation": torch.randint(0, C + 1, (B, T, H, W), generator=g),
        "keypoints": torch.rand(B, T, P, 2, generator=g),
        "keypoint_visible": torch.rand(B, T, P, generator=g) > 0.3,
        "caption": torch.randint(3, 9, (B, L), generator=g),
        "answers": torch.randint(-1, len(schema.ANSWERS), (B, 4), generator=g),
        "keyframes": torch.rand(B, T + 2, generator=g),
        "clean": torch.rand(B, T, 3, H, W, generator=g),
        "next_frames": torch.rand(B, 2, 3, H, W, generator=g),
    }


def _outputs(t: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, object]:
    def noisy(x: torch.Tensor, s: float) -> torch.Tensor:
        return x + s * torch.randn(x.shape, generator=g)

    caption = t["caption"].clone()
    caption[torch.rand(caption.shape, generator=g) > 0.6] = 4
    return {
        "action": torch.randn(B, len(schema.ACTIONS), generator=g),
        "sentiment": torch.randn(B, len(schema.SENTIMENTS), generator=g),
        "moderation": torch.randn(B, generator=g),
        "quality": noisy(t["quality"], 0.3),
        "detection": {
            "boxes": noisy(t["boxes"], 0.05),
            "logits": torch.randn(B, T, 2, C + 1, generator=g) * 3,
        },
        "segmentation": torch.randn(B, T, C + 1, H // 2, W // 2, generator=g),
        "pose": noisy(t["keypoints"], 0.08),
        "caption": caption,
        "qa": torch.randn(B, 4, len(schema.ANSWERS), generator=g),
        "summary": noisy(t["keyframes"], 0.3),
        "restoration": noisy(t["clean"], 0.1).clamp(0, 1),
        "next_frame": noisy(t["next_frames"], 0.2).clamp(0, 1),
    }


def _batches(n: int = 2, seed: int = 0) -> list[tuple[dict[str, object], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = _targets(g)
        out.append((_outputs(t, g), t))
    return out


def _cat(xs: list) -> object:  # type: ignore[type-arg]
    if isinstance(xs[0], dict):
        return {k: _cat([x[k] for x in xs]) for k in xs[0]}
    return torch.cat(xs)


def _meter(task: str, batches) -> object:  # type: ignore[no-untyped-def]
    meter = build_metric(task)
    for out, tgt in batches:
        meter.update(out[task], tgt)
    return meter


def test_compute_keeps_the_dataset_level_definitions() -> None:
    """Per-clip evidence changes nothing: each figure is the functional one on all clips."""
    batches = _batches()
    outs, tgts = _cat([o for o, _ in batches]), _cat([t for _, t in batches])
    res = {t: _meter(t, batches).compute() for t in schema.TASKS}
    macro = M.classification(outs["action"], tgts["action"], len(schema.ACTIONS))
    assert {k: res["action"][k] for k in macro} == macro
    labels = tgts["action"]
    for k, name in enumerate(schema.ACTIONS):  # recall of each class the clips carry
        if (labels == k).any():
            hits = (outs["action"].argmax(-1)[labels == k] == k).double().mean()
            assert res["action"][f"recall_{name}"] == pytest.approx(float(hits))
    det = outs["detection"]
    scores, classes = det["logits"].softmax(-1)[..., :-1].max(-1)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    assert res["detection"]["map50"] == M.detection_map50(
        flat(det["boxes"]),
        flat(scores),
        flat(classes),
        flat(tgts["boxes"]),
        flat(tgts["box_classes"]),
    )
    seg = torch.nn.functional.interpolate(
        outs["segmentation"].reshape(-1, C + 1, H // 2, W // 2), size=(H, W), mode="bilinear"
    ).argmax(1)
    assert res["segmentation"]["miou"] == pytest.approx(
        M.miou(seg, tgts["segmentation"].reshape(-1, H, W), C + 1), abs=1e-12
    )
    for task, key in (("restoration", "clean"), ("next_frame", "next_frames")):
        assert res[task]["psnr"] == pytest.approx(M.psnr(outs[task], tgts[key]), rel=1e-6)
        mse = float(((outs[task] - tgts[key]) ** 2).mean())
        assert res[task]["psnr_set"] == pytest.approx(-10 * math.log10(mse), rel=1e-6)
        assert res[task]["ssim"] == pytest.approx(M.ssim(outs[task], tgts[key]), rel=1e-6)
    kw = {"ignore_ids": (0, 1, 2), "eos_id": 2}
    assert res["caption"]["token_f1"] == M.token_f1(outs["caption"], tgts["caption"], **kw)
    assert res["caption"]["bleu"] == pytest.approx(
        M.bleu(outs["caption"], tgts["caption"], **kw), abs=1e-6
    )
    kps = (outs["pose"], tgts["keypoints"], tgts["keypoint_visible"])
    assert res["pose"]["pck_0.1"] == M.pck(*kps, 0.1)
    assert res["pose"]["pck_box_0.2"] == M.pck_box(*kps, 0.2)


@pytest.mark.parametrize("task", schema.TASKS)
def test_a_resample_is_a_dataset_of_the_drawn_clips(task: str) -> None:
    batches = _batches()
    meter = _meter(task, batches)
    n = meter.clips()
    assert n == 2 * B
    at = meter.resampler()
    everything = at(torch.arange(n))
    assert everything.keys() == meter.compute().keys()
    assert everything == pytest.approx(meter.compute(), rel=1e-6, abs=1e-9)
    # clips 0, 0, 4, 5, 5, 5: the same figures as a dataset holding those copies
    idx = torch.tensor([0, 0, 4, 5, 5, 5])
    outs, tgts = _cat([o for o, _ in batches]), _cat([t for _, t in batches])
    pick = lambda x: {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]  # noqa: E731
    copy = build_metric(task)
    copy.update(pick(outs[task]), pick(tgts))
    assert at(idx) == pytest.approx(copy.compute(), rel=1e-6, abs=1e-9)


def test_the_bootstrap_interval_holds_the_estimate_and_shrinks_with_more_clips() -> None:
    def meter(n: int):  # type: ignore[no-untyped-def]
        target = torch.zeros(n, dtype=torch.long)
        pred = torch.zeros(n, len(schema.ACTIONS))
        pred[torch.arange(n) % 10 >= 7, 1] = 1.0  # 70 % right
        m = build_metric("action")
        m.update(pred, {"action": target})
        return m

    small, large = meter(20), meter(400)
    ci_small = paired_bootstrap(small, resamples=300)["accuracy"]["ci95"]
    ci_large = paired_bootstrap(large, resamples=300)["accuracy"]["ci95"]
    for lo, hi in (ci_small, ci_large):
        assert lo <= 0.7 <= hi and lo < hi
    assert ci_large[1] - ci_large[0] < (ci_small[1] - ci_small[0]) / 2
    assert paired_bootstrap(small, resamples=300) == paired_bootstrap(small, resamples=300)


def test_a_model_equal_to_its_baseline_has_margin_zero() -> None:
    batches = _batches()
    for task in ("action", "detection", "caption", "summary"):
        res = paired_bootstrap(_meter(task, batches), _meter(task, batches), resamples=100)
        for metric, ci in res.items():
            assert ci["margin_ci95"] == (0.0, 0.0), (task, metric)
    # a better model: the margin's interval is of the paired difference, above 0
    target = torch.arange(40) % 2
    good, base = build_metric("moderation"), build_metric("moderation")
    good.update(target.float() * 2 - 1, {"moderation": target.float()})
    base.update(-torch.ones(40), {"moderation": target.float()})
    lo, hi = paired_bootstrap(good, base, resamples=200)["accuracy"]["margin_ci95"]
    assert 0 < lo <= 0.5 <= hi


def test_baseline_fill_and_mismatched_clips() -> None:
    model, base = build_metric("quality"), build_metric("quality")
    q = torch.linspace(0, 1, 10)
    model.update(q, {"quality": q})
    base.update(torch.full((10,), 0.5), {"quality": q})
    res = paired_bootstrap(model, base, fill={"spearman": 0.0}, resamples=50)
    assert res["spearman"]["margin_ci95"] == pytest.approx((1.0, 1.0))  # ranking vs none
    short = build_metric("quality")
    short.update(q[:3], {"quality": q[:3]})
    with pytest.raises(UsageError, match="the model saw 10 clips, its baseline 3"):
        paired_bootstrap(model, short)


def test_client_bootstrap() -> None:
    assert client_bootstrap([(10.0, 0.8, 0.5)]) == (None, None)  # one client: no spread
    results = [(10.0, 0.8, 0.5), (30.0, 0.6, 0.5), (20.0, 0.9, 0.4)]
    value, margin = client_bootstrap(results, resamples=500)
    assert value is not None and margin is not None
    assert 0.6 <= value[0] <= 0.75 <= value[1] <= 0.9
    assert margin[0] > 0
    assert client_bootstrap([(1.0, 0.5, 0.5), (2.0, 0.7, 0.7)])[1] == (0.0, 0.0)
