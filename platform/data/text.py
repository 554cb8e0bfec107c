"""Word-level tokenizer fitted on the world's vocabulary, with a byte-level fallback.

Known words get one id each; any other word is spelled as byte tokens, so real transcripts never
hit an out-of-vocabulary error and the vocabulary stays small enough for DP-SGD embeddings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from veilfed.data import schema

PAD, BOS, EOS, SEP = 0, 1, 2, 3
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>")
_BYTES = 256


class Tokenizer:
    """Ids: specials, then 256 byte tokens, then words."""

    def __init__(self, words: Iterable[str] = schema.WORDS) -> None:
        self.words: list[str] = list(dict.fromkeys(words))
        self._offset = len(_SPECIALS) + _BYTES
        self._index = {w: self._offset + i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, texts: Iterable[str], min_count: int = 1) -> Tokenizer:
        """Vocabulary of words seen at least ``min_count`` times (plus the world's words)."""
        counts = Counter(w for t in texts for w in t.lower().split())
        fitted = [w for w, c in sorted(counts.items()) if c >= min_count]
        return cls([*schema.WORDS, *fitted])

    @property
    def vocab_size(self) -> int:
        return self._offset + len(self.words)

    def encode(self, text: str, max_len: int, bos_eos: bool = False) -> list[int]:
        """Token ids padded with PAD (or truncated) to ``max_len``."""
        ids: list[int] = [BOS] if bos_eos else []
        for word in text.lower().split():
            if word in self._index:
                ids.append(self._index[word])
            else:
                ids.extend(len(_SPECIALS) + b for b in word.encode("utf-8"))
                ids.append(SEP)
        if bos_eos:
            ids = ids[: max_len - 1] + [EOS]
        ids = ids[:max_len]
        return ids + [PAD] * (max_len - len(ids))

    def decode(self, ids: Iterable[int]) -> str:
        words: list[str] = []
        spelled = bytearray()
        for i in ids:
            if i in (PAD, EOS):
                if i == EOS:
                    break
                continue
            if i == BOS:
                continue
            if i == SEP:
                words.append(spelled.decode("utf-8", errors="replace"))
                spelled.clear()
            elif i < self._offset:
                spelled.append(i - len(_SPECIALS))
            else:
                words.append(self.words[i - self._offset])
        if spelled:
            words.append(spelled.decode("utf-8", errors="replace"))
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        return cls(data["words"])
