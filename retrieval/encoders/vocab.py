"""A compact vocabulary over open_clip's BPE tokenizer.

open_clip's tokenizer knows 49,408 tokens; a text tower trained on a small world uses a few hundred
of them. Keeping the full embedding table would make the starter model 25 MB of rows that training
never touches, so a trained model may store the BPE ids it kept and map every other token to one
`<unk>` row. Texts are still split by open_clip's own BPE, so nothing about tokenisation changes.

Compact ids: 0 padding (as open_clip pads), 1 unknown, then the kept BPE ids in ascending order,
then start-of-text, then end-of-text last: open_clip pools the text at the *largest* token id
(`text.argmax(-1)`), which must still be the end-of-text token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, UNK = 0, 1
RESERVED = 4  # padding, unknown, start and end of text


def _base_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def build_vocab(texts: Iterable[str], context_length: int) -> tuple[int, ...]:
    """The BPE ids that occur in `texts` (special tokens excluded), sorted: what a model keeps."""
    base = _base_tokenizer(context_length)
    special = {0, base.sot_token_id, base.eot_token_id}
    seen: set[int] = set()
    for text in texts:
        seen.update(base.encode(text))
    return tuple(sorted(seen - special))


def vocab_size(kept: Sequence[int]) -> int:
    return len(kept) + RESERVED


class CompactTokenizer:
    """Callable like open_clip's tokenizer: texts -> (n, context_length) int64 compact ids."""

    def __init__(self, kept: Sequence[int], context_length: int) -> None:
        import torch

        self.base = _base_tokenizer(context_length)
        self.context_length = context_length
        self.kept = tuple(kept)
        table = torch.full((self.base.vocab_size,), UNK, dtype=torch.long)  # (49408,)
        table[0] = PAD
        table[torch.tensor(self.kept, dtype=torch.long)] = torch.arange(2, 2 + len(self.kept))
        table[self.base.sot_token_id] = len(self.kept) + 2
        table[self.base.eot_token_id] = len(self.kept) + 3
        self.table = table

    @property
    def vocab_size(self) -> int:
        return vocab_size(self.kept)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None):
        return self.table[self.base(texts, context_length or self.context_length)]
