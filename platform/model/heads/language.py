"""Language heads: captioning (autoregressive transformer decoder) and video question answering.

Both attend to the view's tokens (all modalities, masked), so their attention works with any
fusion. Their embeddings are their own (not the text encoder's): Opacus ghost clipping does not
support a module called twice in one forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from veilfed.data.text import BOS, EOS, PAD, Tokenizer
from veilfed.model.heads.base import Head, HeadInput
from veilfed.model.layers import Attention, Block, positions
from veilfed.model.registry import HEADS
from veilfed.tasks import TaskSpec


@HEADS.register("caption")
class CaptionHead(Head):
    """Teacher-forced during training: output [B, L-1, V] predicts ``caption[:, 1:]``.

    :meth:`generate` decodes greedily for evaluation, to the length of the reference captions.
    """

    generative = True

    def __init__(
        self,
        dim: int,
        spec: TaskSpec,
        layers: int = 1,
        heads: int = 4,
        vocab_size: int | None = None,
        **_: object,
    ) -> None:
        super().__init__(dim, spec)
        self.vocab = vocab_size or Tokenizer().vocab_size
        self.max_len = max_len = int(spec.options["max_len"])
        self.embed = nn.Embedding(self.vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.cond = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, cross=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, self.vocab)

    def decode(self, inp: HeadInput, prefix: Tensor) -> Tensor:
        """Logits [B, L, V] for each position of ``prefix`` [B, L]."""
        view = inp.view
        x = self.embed(prefix) + self.pos(positions(*prefix.shape, prefix.device))
        x = x + self.cond(view.pooled).unsqueeze(1)
        for block in self.blocks:
            x = block(
                x, prefix != PAD, causal=True, memory=view.tokens, memory_mask=view.token_mask
            )
        return self.out(self.norm(x))

    def forward(self, inp: HeadInput) -> Tensor:
        caption = self.target(inp.batch["targets"])
        return self.decode(inp, caption[:, :-1].contiguous())

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        target = self.target(targets)[:, 1:]
        ce = F.cross_entropy(output.transpose(1, 2), target, ignore_index=PAD, reduction="none")
        return ce.sum(dim=1) / (target != PAD).sum(dim=1).clamp(min=1)

    def generate(self, views: Sequence[tuple[Head, HeadInput]], weights: Tensor | None) -> Tensor:
        max_len = self.target(views[0][1].batch["targets"]).shape[1]
        return greedy_captions(views, weights, max_len)


def greedy_captions(
    steps: Sequence[tuple[CaptionHead, HeadInput]], weights: Tensor | None, max_len: int
) -> Tensor:
    """Greedy decoding [B, max_len] (BOS ... EOS PAD); with several views the per-view next-token
    log-probabilities are combined with the vote ``weights``."""
    first = steps[0][1].batch["video"]
    b = first.shape[0]
    ids = torch.full((b, 1), BOS, dtype=torch.long, device=first.device)
    done = torch.zeros(b, dtype=torch.bool, device=first.device)
    for _ in range(max_len - 1):
        logp = [head.decode(inp, ids)[:, -1].log_softmax(-1) for head, inp in steps]
        if weights is None:
            combined = logp[0]
        else:
            combined = sum(w.unsqueeze(-1) * lp for w, lp in zip(weights.T, logp, strict=True))
        nxt = combined.argmax(-1).masked_fill(done, PAD)
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        done = done | (nxt == EOS)
        if bool(done.all()):
            break
    return F.pad(ids, (0, max_len - ids.shape[1]), value=PAD)


@HEADS.register("qa")
class QAHead(Head):
    """Each question (bag of word embeddings + its type: the question's position modulo the
    task's ``question_types``) attends to the view's tokens; logits over the task's answers
    (its classes) per question [B, Q, C]."""

    def __init__(
        self,
        dim: int,
        spec: TaskSpec,
        heads: int = 4,
        vocab_size: int | None = None,
        **_: object,
    ) -> None:
        super().__init__(dim, spec)
        self.types = spec.options["question_types"]
        self.embed = nn.Embedding(vocab_size or Tokenizer().vocab_size, dim)
        self.qtype = nn.Embedding(self.types, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, len(spec.classes))
        )

    def forward(self, inp: HeadInput) -> Tensor:
        questions = self.target(inp.batch["targets"], "questions")  # [B, Q, Lq]
        b, q, _ = questions.shape
        words = self.embed(questions)  # [B, Q, Lq, D]
        mask = (questions != PAD).unsqueeze(-1).to(words.dtype)
        query = (words * mask).sum(2) / mask.sum(2).clamp(min=1.0)
        query = query + self.qtype(positions(b, q, questions.device) % self.types)
        attended, _ = self.attn(self.norm(query), inp.view.tokens, inp.view.token_mask)
        context = inp.view.pooled.unsqueeze(1).expand(b, q, self.dim)
        return self.mlp(torch.cat([query + attended, context], dim=-1))

    def loss(self, output: Tensor, targets: dict[str, Tensor]) -> Tensor:
        answers = self.target(targets, "answers")
        ce = F.cross_entropy(output.transpose(1, 2), answers.clamp(min=0), reduction="none")
        labelled = (answers >= 0).float()
        return (ce * labelled).sum(1) / labelled.sum(1).clamp(min=1.0)
