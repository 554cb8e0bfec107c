"""Knowledge distillation: train a smaller student to reproduce a trained teacher's outputs.

Generic over modules: the student is built by a callable, outputs may be tensors or (nested)
dicts of tensors such as ``MultiTaskModel``'s ``{task: output}``. The default loss is MSE between
student and teacher outputs (logit matching), which needs no knowledge of which outputs are
logits; pass ``loss(student_out, teacher_out, batch)`` to add temperature KL or the task loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.compress.registry import COMPRESSIONS, ModelCompression
from veilfed.devices import to_device
from veilfed.errors import UsageError


def _leaves(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _leaves(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _leaves(o)]
    return []


def match_outputs(student_out: Any, teacher_out: Any, batch: Any = None) -> Tensor:
    """Mean over float output tensors of the MSE between student and teacher."""
    s, t = _leaves(student_out), _leaves(teacher_out)
    if not s or len(s) != len(t):
        raise UsageError(
            "compression distill: student and teacher outputs do not match "
            f"({len(s)} vs {len(t)} float tensors); give the student the same tasks"
        )
    return torch.stack([F.mse_loss(a, b.detach()) for a, b in zip(s, t, strict=True)]).mean()


@COMPRESSIONS.register("distill")
class Distill(ModelCompression):
    """Train ``build_student()`` on ``loader`` to imitate the model; returns the student.
    ``optimizer(params)`` builds its optimizer (default: Adam at ``lr``)."""

    name = "distill"

    def __init__(
        self,
        build_student: Callable[[], nn.Module],
        loader: Iterable[Any],
        loss: Callable[[Any, Any, Any], Tensor] = match_outputs,
        epochs: int = 1,
        lr: float = 1e-3,
        forward: Callable[[nn.Module, Any], Any] = lambda model, batch: model(batch),
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    ) -> None:
        if epochs < 1:
            raise UsageError(f"compression distill: epochs={epochs} must be >= 1")
        self.build_student, self.loader, self.loss = build_student, loader, loss
        self.epochs, self.lr, self.forward = epochs, lr, forward
        self.optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=self.lr))

    def compress(self, model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        student = self.build_student().to(device).train()
        opt = self.optimizer(student.parameters())
        was_training = model.training
        model.eval()
        try:
            for _ in range(self.epochs):
                for batch in self.loader:
                    batch = to_device(batch, device)
                    with torch.no_grad():
                        target = self.forward(model, batch)
                    loss = self.loss(self.forward(student, batch), target, batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            model.train(was_training)
        return student.eval()
