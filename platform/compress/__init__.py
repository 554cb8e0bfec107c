"""Compression registry: smaller models after training, smaller federated messages during it.

Model compressions (``COMPRESSIONS.build(name, ...)(model, eval_fn) -> (model, report)``):

* ``int8_ptq`` — dynamic int8 quantization of Linear/LSTM/GRU layers (CPU inference);
* ``magnitude_prune`` — global L1 unstructured pruning; ``structured_prune`` — L2 pruning of
  whole channels (``torch.nn.utils.prune``, made permanent; size measured sparse-packed);
* ``distill`` — train a smaller student (``build_student`` callable) on the teacher's outputs.

Update compressors (``compress(update: list[np.ndarray]) -> payload``, ``decompress(payload)``,
``report(update)`` for ratio and relative reconstruction error):

* ``topk`` — largest-magnitude coordinates + indices, optional error feedback (residual);
* ``randk`` — coordinates chosen by a per-round seed shared by all clients, no indices sent;
* ``int8_update`` — 8-bit stochastic quantisation, per-tensor or shared scale.

Compatibility with CKKS secure aggregation (the coordinator only *adds* ciphertexts, so the
encoded messages must be summable position by position with one common decoding):

* ``int8_update`` with a shared ``scale``: yes — the codes add, ``scale * sum`` decodes the sum
  (clients encrypt the codes; CKKS packs them as reals). With per-tensor scales: no.
* ``randk`` with the round's shared seed: yes — every client fills the same slots.
* ``topk``: no — indices differ per client, so slot ``j`` of two ciphertexts means different
  weights; use it only without HE (or with a shared mask, i.e. ``randk``).

Update compression runs on the already clipped and noised DP update, so it is post-processing
and costs no privacy budget; error-feedback residuals stay on the client.

Every compression returns a :class:`CompressionReport` (bytes before/after, ratio, and the
metric before/after when given an eval function).
"""

from veilfed.compress import distill, prune, quantize, updates  # noqa: F401  (registration)
from veilfed.compress.distill import Distill, match_outputs
from veilfed.compress.prune import MagnitudePrune, StructuredPrune, sparsity
from veilfed.compress.quantize import Int8PTQ
from veilfed.compress.registry import (
    COMPRESSIONS,
    ModelCompression,
    Payload,
    Update,
    UpdateCompressor,
    payload_bytes,
)
from veilfed.compress.report import (
    CompressionReport,
    pack_sparse,
    state_dict_bytes,
    unpack_sparse,
)
from veilfed.compress.updates import Int8Update, RandK, TopK

__all__ = [
    "COMPRESSIONS",
    "CompressionReport",
    "Distill",
    "Int8PTQ",
    "Int8Update",
    "MagnitudePrune",
    "ModelCompression",
    "Payload",
    "RandK",
    "StructuredPrune",
    "TopK",
    "Update",
    "UpdateCompressor",
    "match_outputs",
    "pack_sparse",
    "payload_bytes",
    "sparsity",
    "state_dict_bytes",
    "unpack_sparse",
]
