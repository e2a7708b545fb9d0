"""The prompt encoders: a transformer (BERT-family, mean pooled) built from the config, and the static
token table distilled from one.

This file travels to the Hub next to `modeling_carrot.py` as remote code: it imports only torch,
transformers, the standard library and its flat siblings (relative imports).
"""

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel

from .configuration_carrot import CarrotConfig


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real tokens: `(batch, seq, hidden)` → `(batch, hidden)`."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

class CarrotStaticEncoder(nn.Module):
    r"""
    A static sentence encoder: one vector per token of the vocabulary, distilled from a sentence
    encoder (model2vec: each token's embedding by the encoder, reduced by PCA and weighted by a
    Zipf estimate of its frequency), averaged over a prompt's tokens and L2-normalised. No attention
    and no positions: a prompt costs one table lookup per token, so the tokenizer is the main cost.

    Buffers and weights (all in `model.safetensors`):
        token_embeddings.weight `(vocab_size, embedding_size)`: the distilled rows, SIF weight
            folded in (model2vec multiplies them at encoding time: the mean is the same).
        fallback `(embedding_size,)`: the embedding given to a prompt with no token of the
            vocabulary (the L2-normalised mean of all rows: the "average token").
    """

    def __init__(self, vocab_size: int, embedding_size: int):
        super().__init__()
        self.token_embeddings = nn.EmbeddingBag(vocab_size, embedding_size, mode="mean")
        self.register_buffer("fallback", torch.zeros(embedding_size))

    @property
    def vocab_size(self) -> int:
        return self.token_embeddings.num_embeddings

    @property
    def embedding_size(self) -> int:
        return self.token_embeddings.embedding_dim

    def embed_bags(
        self, token_ids: torch.Tensor, offsets: torch.Tensor, empty: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Prompts as one flat `token_ids (n_tokens,)` tensor and the `offsets (batch,)` where each
        prompt starts → `(batch, embedding_size)` float32 L2-normalised embeddings; a prompt with no
        tokens gets `fallback`. `empty (batch,)` bool, when the caller knows it, saves finding them.
        """
        # The functional form: the module's call costs more than the lookup for a single prompt.
        pooled = F.embedding_bag(token_ids, self.token_embeddings.weight, offsets, mode="mean").float()
        if empty is None:
            empty = torch.diff(offsets, append=offsets.new_tensor([token_ids.numel()])) == 0
        return self._normalise(pooled, empty)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded `(batch, seq)` token ids and mask → `(batch, embedding_size)`, as [`embed_bags`]."""
        rows = F.embedding(input_ids, self.token_embeddings.weight).float()
        pooled = mean_pool(rows, attention_mask)
        return self._normalise(pooled, attention_mask.sum(1) == 0)

    def _normalise(self, pooled: torch.Tensor, empty: torch.Tensor | bool) -> torch.Tensor:
        embeddings = F.normalize(pooled, p=2, dim=-1)
        if isinstance(empty, torch.Tensor) and bool(empty.any()):
            embeddings[empty] = self.fallback.float()
        return embeddings

def _transformer_encoder(config: CarrotConfig) -> nn.Module:
    """The BERT-family encoder `config.encoder_config` describes, without its pooler (weights unset)."""
    encoder_config = dict(config.encoder_config or {"model_type": "bert"})
    model_type = encoder_config.pop("model_type", "bert")
    # The encoder's own saved dtype is dropped so that it follows `from_pretrained(dtype=...)`.
    for key in ("architectures", "transformers_version", "auto_map", "_name_or_path", "dtype", "torch_dtype"):
        encoder_config.pop(key, None)
    return AutoModel.from_config(AutoConfig.for_model(model_type, **encoder_config), add_pooling_layer=False)
