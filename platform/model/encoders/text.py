"""Text encoder over :class:`veilfed.data.text.Tokenizer` ids (word vocabulary + byte fallback)."""

from __future__ import annotations

from torch import Tensor, nn

from veilfed.data import schema
from veilfed.data.text import PAD, Tokenizer
from veilfed.model.encoders.base import Encoded, Encoder
from veilfed.model.layers import Block, masked_mean, positions
from veilfed.model.registry import ENCODERS


@ENCODERS.register("text_transformer")
class TextTransformer(Encoder):
    """Token + position embeddings and ``layers`` pre-norm transformer blocks; PAD is masked."""

    modality = "text"

    def __init__(
        self,
        dim: int = 64,
        layers: int = 1,
        heads: int = 4,
        vocab_size: int | None = None,
        max_len: int = schema.MAX_TEXT_TOKENS,
    ) -> None:
        super().__init__(dim)
        self.embed = nn.Embedding(vocab_size or Tokenizer().vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, text: Tensor) -> Encoded:
        mask = text != PAD
        x = self.embed(text) + self.pos(positions(*text.shape, text.device))
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return Encoded(tokens=x, pooled=masked_mean(x, mask), token_mask=mask)
