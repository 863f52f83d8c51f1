"""SRformer math as small pure functions on tensors (SPEC sections 3-6).

Shapes: B batch (examples), H heads, n keys, d head dim, s segment size, M segments, T decoder
positions. The training path works in a *grouped* layout: decoder positions that read the same
segment form a group, groups are laid out (B, H, L, S, d) with L groups and S slots per group, so one
batched matmul serves every position without materialising a segment copy per position.

Nothing here knows about T5, BART, caches or nn.Modules; ``reference.py`` holds a loop version of the
same formulas that the tests hold these functions to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6


# --------------------------------------------------------------------------- keys and segments
@dataclass
class SegmentedKeys:
    """Encoder keys/values with each example's real tokens first, zero padded to M_max segments."""

    keys: torch.Tensor  # (B, H, M_max * seg_len, d), padding rows are zero
    values: torch.Tensor  # (B, H, M_max * seg_len, d)
    key_valid: torch.Tensor  # (B, M_max * seg_len) bool
    lengths: torch.Tensor  # (B,) real keys per example (n)
    n_segments: torch.Tensor  # (B,) M = ceil(n / s)
    seg_len: int  # slots per segment: s, or n_max when one segment holds everything

    @property
    def max_segments(self) -> int:
        return self.keys.shape[2] // self.seg_len

    def segment_view(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, M_max*seg_len, d) -> (B, H, M_max, seg_len, d)."""
        b, h, _, d = x.shape
        return x.view(b, h, self.max_segments, self.seg_len, d)


def segment_keys(keys: torch.Tensor, values: torch.Tensor, key_valid: torch.Tensor | None,
                 seg_size: int) -> SegmentedKeys:
    """Move each example's real keys to the front (left padding allowed) and pad to whole segments.

    keys, values: (B, H, n, d); key_valid: (B, n) bool or None (all real).
    Raises ValueError when an example has no real key: attention over nothing is undefined.
    """
    batch, _, n_keys, _ = keys.shape
    if key_valid is None:
        key_valid = torch.ones(batch, n_keys, dtype=torch.bool, device=keys.device)
    lengths = key_valid.sum(-1)
    if bool((lengths == 0).any()):
        empty = (lengths == 0).nonzero().flatten().tolist()
        raise ValueError(f"encoder input is empty after masking (n = 0) for batch row(s) {empty}")
    positions = torch.arange(n_keys, device=keys.device)
    prefix = positions[None, :] < lengths[:, None]
    if not torch.equal(prefix, key_valid):  # left padding or holes: stable-sort real keys first
        order = torch.argsort((~key_valid).to(torch.int8), dim=-1, stable=True)
        index = order[:, None, :, None].expand_as(keys)
        keys, values = keys.gather(2, index), values.gather(2, index)
    n_max = int(lengths.max())
    n_segments = (lengths + seg_size - 1) // seg_size
    max_segments = int(n_segments.max())
    seg_len = seg_size if max_segments > 1 else n_max
    total = max_segments * seg_len
    keys, values = _fit_length(keys, total), _fit_length(values, total)
    valid = torch.arange(total, device=keys.device)[None, :] < lengths[:, None]
    keep = valid[:, None, :, None].to(keys.dtype)
    # contiguous (B, H, n, d): a decode step then reads each segment as one block
    return SegmentedKeys((keys * keep).contiguous(), (values * keep).contiguous(), valid, lengths, n_segments,
                         seg_len)


def _fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Cut or zero-pad dim 2 of (B, H, n, d) to ``length``."""
    if x.shape[2] >= length:
        return x[:, :, :length]
    return F.pad(x, (0, 0, 0, length - x.shape[2]))


# --------------------------------------------------------------------------- the segment schedule
def segment_of_step(positions: torch.Tensor, n_segments: torch.Tensor, schedule_length: int) -> torch.Tensor:
    """σ(t) = min(M - 1, floor(t * M / G)) for each example: (T,), (B,) -> (B, T)."""
    m = n_segments[:, None]
    return torch.minimum(m - 1, positions[None, :] * m // schedule_length)


@dataclass
class StepGroups:
    """Decoder positions grouped by the segment they read (one group per RAF step)."""

    group_of_step: torch.Tensor  # (B, T) which group (RAF step) position t belongs to
    slot_of_step: torch.Tensor  # (B, T) position of t inside its group
    segment_of_group: torch.Tensor  # (B, L) the segment σ each group reads
    n_groups: int  # L (max over the batch)
    n_slots: int  # S (max group size over the batch)

    @property
    def flat_index(self) -> torch.Tensor:  # (B, T) index into the flattened (L*S) layout
        return self.group_of_step * self.n_slots + self.slot_of_step


def group_steps(segments: torch.Tensor) -> StepGroups:
    """Group consecutive positions with the same σ. segments: (B, T), non-decreasing along T."""
    changed = torch.ones_like(segments, dtype=torch.bool)
    changed[:, 1:] = segments[:, 1:] != segments[:, :-1]
    group = changed.long().cumsum(-1) - 1
    steps = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    group_start = torch.where(changed, steps, torch.zeros_like(steps)).cummax(-1).values
    slot = steps - group_start
    n_groups, n_slots = int(group.max()) + 1, int(slot.max()) + 1
    segment_of_group = segments.new_zeros(segments.shape[0], n_groups).scatter(1, group, segments)
    return StepGroups(group, slot, segment_of_group, n_groups, n_slots)


def to_groups(x: torch.Tensor, groups: StepGroups) -> torch.Tensor:
    """(B, H, T, d) -> (B, H, L, S, d), empty slots zero."""
    b, h, _, d = x.shape
    index = groups.flat_index[:, None, :, None].expand_as(x)
    out = x.new_zeros(b, h, groups.n_groups * groups.n_slots, d).scatter(2, index, x)
    return out.view(b, h, groups.n_groups, groups.n_slots, d)


def from_groups(x: torch.Tensor, groups: StepGroups) -> torch.Tensor:
    """(B, H, L, S, d) -> (B, H, T, d)."""
    b, h, n_groups, n_slots, d = x.shape
    index = groups.flat_index[:, None, :, None].expand(b, h, -1, d)
    return x.reshape(b, h, n_groups * n_slots, d).gather(2, index)


def gather_segments(x: torch.Tensor, segment_index: torch.Tensor) -> torch.Tensor:
    """Pick segments per example: x (B, H, M, S', ...) with segment_index (B, L) -> (B, H, L, S', ...)."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    picked = x[rows, :, segment_index]  # (B, L, H, S', ...): whole segment blocks copied at once
    return picked.transpose(1, 2)


# --------------------------------------------------------------------------- local (softmax) attention
def softmax_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      key_valid: torch.Tensor, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """softmax(q Kᵀ + mask) V with the softmax in float32. query is already scaled.

    query (..., T, d), keys/values (..., k, d), key_valid broadcastable to (..., 1, k).
    """
    scores = torch.matmul(query, keys.transpose(-1, -2)).float()
    scores = scores.masked_fill(~key_valid, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout and training:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs.to(values.dtype), values)


def segment_context(seg: SegmentedKeys, variant: str, segment_index: torch.Tensor, globals_=None):
    """Keys, values and validity each group attends to locally, per variant.

    segment_index (B, L) -> keys/values (B, H, L, k, d), valid (B, 1, L, 1, k) where k is seg_len for
    segmented/srformer, 2*seg_len for xl (previous + own segment) and seg_len + M_max for global.
    """
    keys, values = seg.segment_view(seg.keys), seg.segment_view(seg.values)
    valid = seg.key_valid.view(seg.key_valid.shape[0], 1, seg.max_segments, seg.seg_len)  # (B,1,M,S')
    own_k, own_v = gather_segments(keys, segment_index), gather_segments(values, segment_index)
    own_valid = gather_segments(valid, segment_index)  # (B, 1, L, S')
    if variant == "xl":
        previous = (segment_index - 1).clamp(min=0)
        prev_valid = gather_segments(valid, previous) & (segment_index > 0)[:, None, :, None]
        own_k = torch.cat([gather_segments(keys, previous), own_k], dim=3)
        own_v = torch.cat([gather_segments(values, previous), own_v], dim=3)
        own_valid = torch.cat([prev_valid, own_valid], dim=3)
    elif variant == "global":
        glob_k, glob_v, glob_valid = globals_ if globals_ is not None else global_tokens(seg)
        n_groups = segment_index.shape[1]
        own_k = torch.cat([own_k, glob_k[:, :, None].expand(-1, -1, n_groups, -1, -1)], dim=3)
        own_v = torch.cat([own_v, glob_v[:, :, None].expand(-1, -1, n_groups, -1, -1)], dim=3)
        own_valid = torch.cat([own_valid, glob_valid[:, None, None, :].expand(-1, 1, n_groups, -1)], dim=3)
    return own_k, own_v, own_valid[:, :, :, None, :]


def global_tokens(seg: SegmentedKeys):
    """LongT5-style global tokens: the mean real key and value of each segment -> (B,H,M,d) x2, (B,M)."""
    valid = seg.key_valid.view(-1, 1, seg.max_segments, seg.seg_len, 1).to(seg.keys.dtype)
    count = valid.sum(3).clamp(min=1)  # (B, 1, M, 1)
    glob_k = seg.segment_view(seg.keys).sum(3) / count
    glob_v = seg.segment_view(seg.values).sum(3) / count
    seg_ids = torch.arange(seg.max_segments, device=seg.keys.device)
    return glob_k, glob_v, seg_ids[None, :] < seg.n_segments[:, None]


# --------------------------------------------------------------------------- key-value products
KV_CHUNK = 4096  # keys per float32 chunk when the inputs are bf16/fp16 (bounds the upcast copies)


def kv_product(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Kᵀ V in float32 over the key axis: (..., k, d) -> (..., d, d). Zero (padding) rows add nothing.

    Half-precision inputs are upcast a chunk of keys at a time, so a long encoder output is never
    copied whole in float32."""
    if keys.dtype == torch.float32 or keys.shape[-2] <= KV_CHUNK:
        return torch.matmul(keys.float().transpose(-1, -2), values.float())
    total = None
    for k, v in zip(keys.split(KV_CHUNK, dim=-2), values.split(KV_CHUNK, dim=-2)):
        part = torch.matmul(k.float().transpose(-1, -2), v.float())
        total = part if total is None else total + part
    return total


def complement(total: torch.Tensor, part: torch.Tensor | None, clamp: float | None) -> torch.Tensor:
    """C_σ = P - P_σ (all other segments); ``part=None`` gives P itself (ablation IV).

    With ``clamp`` (BART) both products are clamped to [-clamp, clamp] before the subtraction.
    total (B, H, d, d); part (B, H, [L,] d, d).
    """
    if clamp is not None:
        total = total.clamp(-clamp, clamp)
        part = None if part is None else part.clamp(-clamp, clamp)
    if part is None:
        return total
    return (total[:, :, None] if part.dim() == 5 else total) - part


def key_norm(keys: torch.Tensor) -> torch.Tensor:
    """ν[c] = ||K[:, c]||₂ over the real keys (padding rows are zero) + eps: (B, H, n, d) -> (B, H, d)."""
    return torch.linalg.vector_norm(keys, dim=2, dtype=torch.float32) + NORM_EPS


# --------------------------------------------------------------------------- the RAF neuron
def raf_step(membrane: torch.Tensor, x: torch.Tensor, leak: torch.Tensor, threshold: torch.Tensor):
    """One Recurrent Accumulate-and-Fire step; returns (new membrane, output R).

    U <- λ U + X;  R = ReLU(U / θ - 1);  U <- U - θ [U > θ]   (the indicator passes no gradient)
    """
    membrane = leak * membrane + x
    fired = torch.relu(membrane / threshold - 1.0)
    spiked = (membrane > threshold).to(membrane.dtype).detach()
    return membrane - threshold * spiked, fired


def raf_scan(inputs: torch.Tensor, leak: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Run the RAF over a sequence of inputs from U = 0: (B, H, L, d, d) -> outputs R (B, H, L, d, d)."""
    membrane = torch.zeros_like(inputs[:, :, 0])
    outputs = []
    for x in inputs.unbind(2):  # L <= M small d x d steps: the only loop of the training path
        membrane, fired = raf_step(membrane, x, leak, threshold)  # (unbind: one backward, not L slices)
        outputs.append(fired)
    return torch.stack(outputs, dim=2)


def raf_input(complement_: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """X = C Wᵀ with W (d, d) shared by all heads."""
    return torch.matmul(complement_, weight.float().t())


def raf_inputs(total: torch.Tensor, seg_keys: torch.Tensor | None, seg_values: torch.Tensor | None,
               weight: torch.Tensor, clamp: float | None, total_w: torch.Tensor | None = None) -> torch.Tensor:
    """X_σ = C_σ Wᵀ for the segments whose keys/values are given.

    total: P (B, H, d, d); seg_keys/seg_values (B, H, L, S', d), or None for ablation IV (C = P).
    Without a clamp the product is linear, so X_σ = P Wᵀ - K_σᵀ (V_σ Wᵀ): s d² work per segment instead
    of s d² + d³ (the d x d x d product per segment dominates at small s). With a clamp (BART) P_σ must
    exist before W applies. ``total_w`` = P Wᵀ if the caller keeps it (a decoder computes it once).
    Returns (B, H, L, d, d), or (B, H, d, d) when seg_keys is None.
    """
    if seg_keys is None:
        return raf_input(complement(total, None, clamp), weight)
    if clamp is None:
        w_t = weight.float().t()
        total_w = torch.matmul(total, w_t) if total_w is None else total_w
        return total_w[:, :, None] - kv_product(seg_keys, torch.matmul(seg_values.float(), w_t))
    return raf_input(complement(total, kv_product(seg_keys, seg_values), clamp), weight)


def recurrent_output(query: torch.Tensor, recurrent: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """rec = (q R) ⊘ ν. query (..., T, d) scaled; recurrent (..., d, d); norm broadcastable to the
    output with ν along the last axis, or None (ablation II)."""
    out = torch.matmul(query.float(), recurrent)
    return out if norm is None else out / norm
