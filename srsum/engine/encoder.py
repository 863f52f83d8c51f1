"""Encoder self-attention in blocks of queries: exact, with peak memory O(n · block) instead of O(n²).

Hugging Face's T5/BART encoders build an n x n score matrix per head and layer (T5 also an n x n
relative position bias per head, and, with padding, the stack an n x n mask per example). Here each block
of ``block`` query rows attends to all n keys with ``scaled_dot_product_attention``; softmax is per row,
so the result is the same attention. T5's bias depends only on the distance k - q: layer 0 turns its
bucket embedding into a table of the 2n - 1 distances (``relative_bias_table``), every layer reads a
block's rows out of it as a strided view (``relative_bias_rows``: with the keys taken in reverse order,
row q of the bias starts one table entry after row q - 1), and the table travels between layers where
Hugging Face passes its n x n bias. With gradients, each block is recomputed in the backward pass (activation
checkpointing per block) instead of keeping its block x n attention weights alive, so training is also
O(n · block); attention dropout is then drawn per block (same RNG state in the recomputation).

The setting is the config field ``srformer_encoder_block`` (``SRformerSettings.encoder_block``): the
block size, used only for inputs longer than it; 0/None keeps Hugging Face's encoder attention.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers.models.bart.modeling_bart import BartAttention
from transformers.models.t5.modeling_t5 import T5Attention

HOOK_ATTRIBUTE = "_srsum_key_padding_hook"  # the encoder's forward pre-hook handle (see install)


# --------------------------------------------------------------------------- pure functions
def relative_bias_table(embedding: torch.nn.Embedding, n: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bidirectional relative position bias for every distance k - q from n - 1 down to -(n - 1):
    (1, H, 1, 2n-1), entry j holding distance n - 1 - j. The same buckets and embedding as
    ``T5Attention.compute_bias``, over 2n - 1 distances instead of n x n positions."""
    distance = torch.arange(n - 1, -n, -1, device=embedding.weight.device)
    buckets = T5Attention._relative_position_bucket(distance, bidirectional=True, num_buckets=num_buckets,
                                                    max_distance=max_distance)
    return embedding(buckets).t().contiguous()[None, :, None, :]


def is_bias_table(position_bias: torch.Tensor | None, n: int) -> bool:
    """Whether ``position_bias`` is a ``relative_bias_table`` for n keys (not a (.., n, n) bias); n >= 2."""
    return position_bias is not None and position_bias.shape[-2] == 1 and position_bias.shape[-1] == 2 * n - 1


def relative_bias_rows(table: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Query rows [start, stop) of the n x n bias a table stands for, over the keys in *reverse* order, as a
    strided view of the table (nothing copied): (1, H, stop-start, n); [0, h, i, j] is the bias of query
    start + i and key n - 1 - j, table entry start + i + j. (With the keys reversed each row starts one entry
    after the previous one, which a view can express.)"""
    n = (table.shape[-1] + 1) // 2
    entries = table[0, :, 0, start:stop + n - 1]  # only what these rows read: the view's gradient stays this long
    return entries.unfold(-1, n, 1)[None]


def reverse_keys(key, value, mask):
    """Keys, values and the mask's key axis in reverse order (attention sums over keys: same result)."""
    return key.flip(-2), value.flip(-2), None if mask is None else mask.flip(-1)


def mask_rows(mask: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """Rows [start, stop) of a (B, 1, n or 1, n) mask (a one-row key mask applies to every row)."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., start:stop, :]


def additive_mask(bias: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype):
    """What SDPA adds to the scores: the bias where the mask lets a key through and the dtype's minimum
    elsewhere (a boolean mask), or bias + mask (an additive one) — as transformers' sdpa path does."""
    if bias is None:
        return mask
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.finfo(dtype).min)
    return bias + mask


def attend_rows(query, key, value, mask, position_bias, start: int, scale: float, dropout: float) -> torch.Tensor:
    """Softmax attention of query rows [start, start + rows) (B, H, rows, d) over all n keys (B, H, n, d);
    with a bias table, keys, values and mask come in reverse key order (``reverse_keys``)."""
    stop, n = start + query.shape[-2], key.shape[-2]
    if is_bias_table(position_bias, n):
        bias = relative_bias_rows(position_bias, start, stop)
    else:
        bias = None if position_bias is None else position_bias[..., start:stop, :]
    attn_mask = additive_mask(bias, mask_rows(mask, start, stop), query.dtype)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout, scale=scale)


def blocked_attention(query, key, value, block: int, scale: float, mask=None, position_bias=None,
                      dropout: float = 0.0) -> torch.Tensor:
    """Self-attention (B, H, n, d) -> (B, H, n, d), ``block`` query rows at a time.

    ``mask``: None, or (B, 1, n or 1, n), boolean (True: attend) or additive; ``position_bias``: None, a
    ``relative_bias_table`` or an additive (.., n, n) bias. Under autograd each block is recomputed in the
    backward pass, so no block's (B, H, block, n) weights outlive it.
    """
    if is_bias_table(position_bias, key.shape[-2]):
        key, value, mask = reverse_keys(key, value, mask)
    tensors = (query, key, value, position_bias, mask)
    recompute = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if position_bias is None and mask is None and not recompute:
        # nothing to add to the scores (an unpadded BART batch): the fused kernel already works in tiles,
        # in O(n) memory, and one call is faster than a Python loop over blocks
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale)
    out = []
    for start in range(0, query.shape[-2], block):
        rows = query[:, :, start:start + block]
        if recompute:
            out.append(checkpoint(attend_rows, rows, key, value, mask, position_bias, start, scale, dropout,
                                  use_reentrant=False))
        else:
            out.append(attend_rows(rows, key, value, mask, position_bias, start, scale, dropout))
    return torch.cat(out, dim=-2)


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """A 2D (B, n) padding mask as the (B, 1, 1, n) boolean mask the encoder layers take as it is (None when
    nothing is padded), instead of the (B, 1, n, n) one transformers would expand it to."""
    mask = attention_mask.bool()
    return None if bool(mask.all()) else mask[:, None, None, :]


# --------------------------------------------------------------------------- host adapters
class BlockedSelfAttention:
    """Mixin over a host attention class: blocked self-attention for inputs longer than ``encoder_block``.

    The module keeps its class's parameters and attributes (it *is* the host module, with this class
    swapped in), so weights and state-dict keys are unchanged; anything but encoder self-attention on an
    input longer than the block goes to the host's own forward.
    """

    projection_names: tuple = ()  # q, k, v, o projections
    encoder_block: int | None = None

    def uses_blocks(self, hidden_states, key_value_states=None, cache=None) -> bool:
        block = self.encoder_block
        return bool(block) and key_value_states is None and cache is None and hidden_states.shape[1] > block

    def blocked(self, hidden_states, mask, position_bias) -> torch.Tensor:
        q, k, v, o = (getattr(self, name) for name in self.projection_names)
        batch, n = hidden_states.shape[:2]

        def heads(projection):  # (B, H, n, d), contiguous: every block reads all keys and values
            return projection(hidden_states).view(batch, n, -1, self.head_size).transpose(1, 2).contiguous()

        out = blocked_attention(heads(q), heads(k), heads(v), self.encoder_block, self.scaling, mask, position_bias,
                                self.dropout if self.training else 0.0)
        return o(out.transpose(1, 2).reshape(batch, n, -1))


class T5BlockedSelfAttention(BlockedSelfAttention, T5Attention):
    """T5 encoder self-attention (no query scaling: ``scaling`` is 1); layer 0 returns the bias table."""

    host = T5Attention
    projection_names = ("q", "k", "v", "o")

    @property
    def head_size(self) -> int:
        return self.key_value_proj_dim

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        if not self.uses_blocks(hidden_states, key_value_states, cache):
            return super().forward(hidden_states, mask, key_value_states, position_bias, cache, **kwargs)
        if position_bias is None and self.has_relative_attention_bias:
            position_bias = relative_bias_table(self.relative_attention_bias, hidden_states.shape[1],
                                                self.relative_attention_num_buckets,
                                                self.relative_attention_max_distance)
        return self.blocked(hidden_states, mask, position_bias), position_bias, None


class BartBlockedSelfAttention(BlockedSelfAttention, BartAttention):
    """BART encoder self-attention (query scaled by 1/sqrt(d), padding mask only)."""

    host = BartAttention
    projection_names = ("q_proj", "k_proj", "v_proj", "out_proj")

    @property
    def head_size(self) -> int:
        return self.head_dim

    def forward(self, hidden_states, key_value_states=None, cache=None, attention_mask=None, **kwargs):
        if not self.uses_blocks(hidden_states, key_value_states, cache):
            return super().forward(hidden_states, key_value_states, cache, attention_mask, **kwargs)
        return self.blocked(hidden_states, attention_mask, None), None


# --------------------------------------------------------------------------- installing
def _pass_key_padding_mask(block: int, module, args, kwargs):
    """Encoder forward pre-hook: for inputs longer than ``block``, hand the layers a (B, 1, 1, n) key mask
    (transformers passes a 4D mask through as it is) instead of letting the stack expand it to (B, 1, n, n)."""
    positional = len(args) > 1
    mask = args[1] if positional else kwargs.get("attention_mask")
    if mask is None or mask.dim() != 2 or mask.shape[-1] <= block:
        return None
    mask = key_padding_mask(mask)
    if positional:
        return (args[0], mask, *args[2:]), kwargs
    return args, dict(kwargs, attention_mask=mask)


def install_blocked_encoder(encoder, attention_modules, adapter: type, block: int | None) -> None:
    """Make ``attention_modules`` (the encoder's self-attention modules, instances of ``adapter.host``) run in
    blocks of ``block`` queries, or, with ``block`` None/0, restore the host class. Idempotent."""
    handle = getattr(encoder, HOOK_ATTRIBUTE, None)
    if handle is not None:
        handle.remove()
        delattr(encoder, HOOK_ATTRIBUTE)
    for module in attention_modules:
        if block:
            if not isinstance(module, adapter.host):
                raise TypeError(f"encoder_block: {type(module).__name__} is not a {adapter.host.__name__}")
            module.__class__ = adapter
            module.encoder_block = block
        elif isinstance(module, adapter):
            module.__class__ = adapter.host
            del module.encoder_block
    if block:
        setattr(encoder, HOOK_ATTRIBUTE,
                encoder.register_forward_pre_hook(partial(_pass_key_padding_mask, block), with_kwargs=True))
