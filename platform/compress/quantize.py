"""Int8 post-training quantization of a trained model (CPU inference, no calibration data).

* ``nn.Linear`` (and LSTM/GRU): dynamic quantization — int8 weights, activations quantized on
  the fly, int8 matmuls. Works with any forward signature (our models take a batch dict).
* Convolutions and embeddings: weight-only int8 with one scale per output channel / row,
  dequantized at each call. Dynamic int8 convs do not exist, static ones need calibration and
  quant/dequant stubs a generic model lacks, and quantized embeddings only accept 1-2-D indices;
  weight-only keeps every forward working while storing 1 byte per weight.

``torch.ao.quantization`` is deprecated upstream in favour of torchao but still ships with this
torch; its deprecation warnings are silenced here.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from veilfed.compress.registry import COMPRESSIONS, ModelCompression

WEIGHT_ONLY = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def _dequantize(module: nn.Module, args: Any) -> None:
    scale = module.weight_scale.view(-1, *([1] * (module.weight_int8.dim() - 1)))
    module.weight = module.weight_int8.float() * scale


def quantize_weight_only(module: nn.Module) -> None:
    """Replace ``module.weight`` by int8 codes + per-output-channel scales (in place)."""
    w = module.weight.detach().float()
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    codes = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127)
    del module.weight
    module.register_buffer("weight_int8", codes.to(torch.int8))
    module.register_buffer("weight_scale", scale)
    module.register_forward_pre_hook(_dequantize)
    _dequantize(module, ())


@COMPRESSIONS.register("int8_ptq")
class Int8PTQ(ModelCompression):
    """Dynamic int8 Linear/LSTM/GRU and weight-only int8 conv/embedding layers."""

    name = "int8_ptq"

    def __init__(self, weight_only: bool = True) -> None:
        self.weight_only = weight_only

    def compress(self, model: nn.Module) -> nn.Module:
        quantized = copy.deepcopy(model).cpu().eval()
        if self.weight_only:
            for m in quantized.modules():
                if isinstance(m, WEIGHT_ONLY):
                    quantize_weight_only(m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(
                quantized, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8, inplace=True
            )
