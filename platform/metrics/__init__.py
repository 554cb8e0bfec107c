"""Per-task evaluation metrics, and the head output formats they expect.

Meters are registered per head kind (``veilfed.tasks.KINDS``) and built for one declared task
(:func:`build_metric`), whose label space and target keys they read. One fresh accumulator per
task and evaluation::

    meters = {t: build_metric(spec) for t, spec in model.task_specs.items()}
    for batch in loader:
        out = model(batch)
        for t, meter in meters.items():
            meter.update(out[t], batch["targets"], batch["target_mask"][t])
    results = {t: m.compute() for t, m in meters.items()}   # {task: {metric: float}}

Head outputs per kind (``B`` batch, ``T`` frames, ``C`` the task's classes, shapes from
docs/contracts.md; logits may be any float dtype and device):

==============  =====================================================  ========================
kind            head output                                            metrics
==============  =====================================================  ========================
classification  logits ``[B, C]``                                      accuracy, precision,
                                                                       recall, f1 (macro)
binary          one logit ``[B]`` or ``[B, 1]`` (> 0 = flagged)        same, over {no, flagged}
multilabel      logits ``[B, C]`` (> 0 = label on)                     f1 (mean per class),
                                                                       micro_f1, accuracy
regression      score ``[B]`` or ``[B, 1]`` in the task's range        mae, spearman
detection       dict ``boxes [B, T, N, 4]`` normalised xyxy and        map50 (every frame an
                ``logits [B, T, N, C + 1]`` (last = no object, DETR);  image, IoU 0.5)
                or ``scores [B, T, N]`` + ``classes [B, T, N]``
                (-1 = no detection) instead of ``logits``; any N
segmentation    logits ``[B, T, C + 1, h, w]``, any h×w (bilinearly    miou, pixel_accuracy
                upsampled to the label size); or labels ``[B, T, H, W]``
keypoints       keypoints ``[B, T, P, 2]`` normalised (x, y)           pck_box_0.1, pck_box_0.2
                                                                       (of the figure's box
                                                                       side); pck_0.05, pck_0.1
                                                                       (of the frame side);
                                                                       visible only
caption         token logits ``[B, L, V]`` or ids ``[B, L]``           token_f1, bleu (BLEU-4)
qa              logits ``[B, Q, C]`` or ids ``[B, Q]``                 accuracy
frame_scores    scores ``[B, T]`` in [0, 1]                            mae, spearman (per clip)
restoration     pixels ``[B, T, 3, H, W]`` in [0, 1]                   psnr_set (pooled MSE),
                                                                       psnr, ssim (per frame)
next_frame      pixels ``[B, K, 3, H, W]`` in [0, 1]                   same
==============  =====================================================  ========================

Every task's label-only baseline (fitted on training targets, predicting in the head's format)
is in :mod:`veilfed.metrics.baselines`; paired bootstrap intervals over clips in
:mod:`veilfed.metrics.intervals`; the metric / baseline / margin shape runs report in
:mod:`veilfed.metrics.scores`.

Caption metrics ignore PAD/BOS/EOS (``veilfed.data.text``) and cut at the first EOS; token F1
is position-free, so logits aligned to ``caption`` or to ``caption[:, 1:]`` score the same, but
greedily decoded ids (what ``MultiTaskModel.predict`` gives) are the honest input for BLEU.
Metrics that are undefined on the data seen (e.g. Spearman of a constant) are omitted, not NaN.
The plain tensor functions are in :mod:`veilfed.metrics.functional`.
"""

from veilfed.metrics import dense, dense_baselines, tasks  # noqa: F401  (registration)
from veilfed.metrics.baselines import BASELINES, Baseline, build_baseline, fit_baselines
from veilfed.metrics.functional import (
    bleu,
    classification,
    detection_map50,
    miou,
    pck,
    pck_box,
    psnr,
    qa_accuracy,
    regression,
    spearman,
    ssim,
    token_f1,
)
from veilfed.metrics.meter import TASK_METRICS, TaskMetric, build_metric, compute_task_metrics
from veilfed.metrics.scores import Scores, higher_is_better, primary_metric

__all__ = [
    "BASELINES",
    "TASK_METRICS",
    "Baseline",
    "Scores",
    "TaskMetric",
    "bleu",
    "build_baseline",
    "build_metric",
    "classification",
    "compute_task_metrics",
    "detection_map50",
    "fit_baselines",
    "higher_is_better",
    "miou",
    "pck",
    "pck_box",
    "primary_metric",
    "psnr",
    "qa_accuracy",
    "regression",
    "spearman",
    "ssim",
    "token_f1",
]
