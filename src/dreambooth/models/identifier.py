"""The identifier's own embedding, trained at its own rate (``--identifier-lr``).

A rare identifier ("sks") starts out meaning little, or something unrelated. Training the whole text
encoder moves its embedding, but only at the text encoder's rate, and at a rate high enough to move
it the other words drift too: the identifier then soaks up the instance pictures' backgrounds and
"on a blue background" stops working. Here the identifier's token rows get a learning rate of their
own while every other word keeps its embedding (the idea of textual inversion, and of the "pivotal
tuning" in diffusers' advanced DreamBooth script); the rest of the text encoder trains as
``--train-text-encoder`` says, or stays frozen.

The learned offset lives in a small wrapper around the token embedding while training and is added
into the embedding matrix when the model is written, so the output is a plain text encoder.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .tokens import trained_identifier_words


def identifier_token_ids(tokenizer, instance_prompt: str, class_prompt: str | None = None) -> list[int]:
    ids: list[int] = []
    for word in trained_identifier_words(instance_prompt, class_prompt):
        ids += [i for i in tokenizer(word, add_special_tokens=False).input_ids if i not in ids]
    return ids


class IdentifierEmbedding(torch.nn.Module):
    """A token embedding plus a trainable offset for a few token ids."""

    def __init__(self, base: torch.nn.Embedding, token_ids: list[int]):
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(token_ids, device=base.weight.device), persistent=False)
        self.delta = torch.nn.Parameter(torch.zeros(len(token_ids), base.embedding_dim, device=base.weight.device))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.base(input_ids)
        match = (input_ids[..., None] == self.ids).to(self.delta.dtype)   # (B, T, K)
        return out + (match @ self.delta).to(out.dtype)

    def as_embedding(self) -> torch.nn.Embedding:
        """A plain embedding holding base + offset (a copy; training goes on with this wrapper)."""
        emb = torch.nn.Embedding(self.base.num_embeddings, self.base.embedding_dim,
                                 device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            emb.weight.copy_(self.base.weight)
            emb.weight[self.ids] += self.delta.to(emb.weight.dtype)
        return emb


def attach(text_encoder, token_ids: list[int]) -> IdentifierEmbedding:
    wrapper = IdentifierEmbedding(text_encoder.get_input_embeddings(), token_ids)
    text_encoder.set_input_embeddings(wrapper)
    return wrapper


@contextmanager
def merged(text_encoders):
    """Within the block, each wrapped encoder holds a plain embedding (for writing the model)."""
    wrappers = [(te, te.get_input_embeddings()) for te in text_encoders]
    wrappers = [(te, w) for te, w in wrappers if isinstance(w, IdentifierEmbedding)]
    for te, w in wrappers:
        te.set_input_embeddings(w.as_embedding())
    try:
        yield
    finally:
        for te, w in wrappers:
            te.set_input_embeddings(w)
