"""Explanations of a trained model's decisions: attributions per frame, region, time-frequency
bin and token (captum), modality ablation, attention maps, files a person can read, and a check
on the synthetic world that they point at the known cause (docs/explain.md)."""

from veilfed.explain.ablation import ablate
from veilfed.explain.attribute import METHODS, Attribution, attribute
from veilfed.explain.target import EXPLAINABLE, Target, pick
from veilfed.explain.window import explain_window

__all__ = [
    "EXPLAINABLE",
    "METHODS",
    "Attribution",
    "Target",
    "ablate",
    "attribute",
    "explain_window",
    "pick",
]
