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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the engine accumulates in for inputs like ``x``: float64 stays float64, everything
    else (float32, bfloat16, float16) is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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


def every_key_if_none_real(key_valid: torch.Tensor) -> torch.Tensor:
    """(B, n) bool 'is a real key', with a row that has none (an all-zero attention mask) read as all real:
    attention over no key is undefined, so that example attends to every position it was given and its
    outputs stay finite (Hugging Face's additive mask gives such a row finite outputs too). No host sync."""
    return key_valid | ~key_valid.any(-1, keepdim=True)


def segment_keys(keys: torch.Tensor, values: torch.Tensor, key_valid: torch.Tensor | None,
                 seg_size: int) -> SegmentedKeys:
    """Move each example's real keys to the front (left padding allowed) and pad to whole segments.

    keys, values: (B, H, n, d); key_valid: (B, n) bool or None (all real). Pass ``values=keys`` to
    segment one tensor (say encoder rows, H = 1): it is then copied once and returned as both.
    An example with no real key reads all its positions (:func:`every_key_if_none_real`).
    """
    batch, _, n_keys, _ = keys.shape
    if key_valid is None:
        key_valid = torch.ones(batch, n_keys, dtype=torch.bool, device=keys.device)
    key_valid = every_key_if_none_real(key_valid)
    lengths = key_valid.sum(-1)
    positions = torch.arange(n_keys, device=keys.device)
    prefix = positions[None, :] < lengths[:, None]
    order = None
    if not torch.equal(prefix, key_valid):  # left padding or holes: stable-sort real keys first
        order = torch.argsort((~key_valid).to(torch.int8), dim=-1, stable=True)
    n_max = int(lengths.max())
    n_segments = (lengths + seg_size - 1) // seg_size
    max_segments = int(n_segments.max())
    seg_len = seg_size if max_segments > 1 else n_max
    total = max_segments * seg_len
    valid = torch.arange(total, device=keys.device)[None, :] < lengths[:, None]
    keep = valid[:, None, :, None].to(keys.dtype)

    def arrange(x: torch.Tensor) -> torch.Tensor:
        if order is not None:
            x = x.gather(2, order[:, None, :, None].expand_as(x))
        # contiguous (B, H, n, d): a decode step then reads each segment as one block
        return (_fit_length(x, total) * keep).contiguous()

    keys_out = arrange(keys)
    values_out = keys_out if values is keys else arrange(values)
    return SegmentedKeys(keys_out, values_out, valid, lengths, n_segments, seg_len)


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


def schedule_groups(n_segments: torch.Tensor, schedule_length: int) -> "StepGroups":
    """The groups of positions 0..G, (B,) M -> StepGroups over G + 1 positions: every later position
    reads σ = M - 1, the segment of position G, so these cover a decoding of any length."""
    positions = torch.arange(schedule_length + 1, device=n_segments.device)
    return group_steps(segment_of_step(positions, n_segments, schedule_length))


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
    """softmax(q Kᵀ + mask) V with the softmax in float32 (float64 for float64 inputs). query is already
    scaled. query (..., T, d), keys/values (..., k, d), key_valid broadcastable to (..., 1, k) -> (..., T, d)
    in that compute dtype (the product itself runs in the values' dtype).
    """
    scores = torch.matmul(query, keys.transpose(-1, -2))
    dtype = compute_dtype(query)
    scores = torch.where(key_valid, scores if scores.dtype == dtype else scores.to(dtype), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout and training:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs if probs.dtype == values.dtype else probs.to(values.dtype), values)
    return out if out.dtype == dtype else out.to(dtype)


def segment_context(seg: SegmentedKeys, variant: str, segment_index: torch.Tensor, globals_=None):
    """Keys, values and validity each group attends to locally, per variant.

    segment_index (B, L) -> keys/values (B, H, L, k, d), valid (B, 1, L, 1, k) where k is seg_len for
    segmented/srformer, 2*seg_len for xl (previous + own segment) and seg_len + M_max for global.
    """
    valid = seg.key_valid.view(seg.key_valid.shape[0], 1, seg.max_segments, seg.seg_len)  # (B,1,M,S')
    own_k, own_v = _gather_keys_values(seg, segment_index)
    own_valid = gather_segments(valid, segment_index)  # (B, 1, L, S')
    if variant == "xl":
        previous = (segment_index - 1).clamp(min=0)
        prev_valid = gather_segments(valid, previous) & (segment_index > 0)[:, None, :, None]
        prev_k, prev_v = _gather_keys_values(seg, previous)
        own_k = torch.cat([prev_k, own_k], dim=3)
        own_v = own_k if prev_v is prev_k else torch.cat([prev_v, own_v], dim=3)
        own_valid = torch.cat([prev_valid, own_valid], dim=3)
    elif variant == "global":
        return with_global_tokens(own_k, own_v, own_valid, globals_ if globals_ is not None else global_tokens(seg))
    return own_k, own_v, own_valid[:, :, :, None, :]


def _gather_keys_values(seg: SegmentedKeys, segment_index: torch.Tensor):
    """Keys and values of the given segments (B, H, L, S', d); one gather when they are one tensor."""
    keys = gather_segments(seg.segment_view(seg.keys), segment_index)
    return keys, (keys if seg.values is seg.keys else gather_segments(seg.segment_view(seg.values), segment_index))


def with_global_tokens(keys, values, valid, globals_):
    """Append the global tokens to every group's segment: keys/values (B, H, L, S', d), valid (B, 1, L, S')
    and globals (B, H, M, d) x2, (B, M) -> keys/values (B, H, L, S' + M, d), valid (B, 1, L, 1, S' + M)."""
    glob_k, glob_v, glob_valid = globals_
    n_groups = keys.shape[2]
    keys = torch.cat([keys, glob_k[:, :, None].expand(-1, -1, n_groups, -1, -1)], dim=3)
    values = torch.cat([values, glob_v[:, :, None].expand(-1, -1, n_groups, -1, -1)], dim=3)
    valid = torch.cat([valid, glob_valid[:, None, None, :].expand(-1, 1, n_groups, -1)], dim=3)
    return keys, values, valid[:, :, :, None, :]


def global_tokens(seg: SegmentedKeys):
    """LongT5-style global tokens: the mean real key and value of each segment -> (B,H,M,d) x2, (B,M)."""
    valid = seg.key_valid.view(-1, 1, seg.max_segments, seg.seg_len, 1).to(seg.keys.dtype)
    count = valid.sum(3).clamp(min=1)  # (B, 1, M, 1)
    glob_k = seg.segment_view(seg.keys).sum(3) / count
    glob_v = glob_k if seg.values is seg.keys else seg.segment_view(seg.values).sum(3) / count
    seg_ids = torch.arange(seg.max_segments, device=seg.keys.device)
    return glob_k, glob_v, seg_ids[None, :] < seg.n_segments[:, None]


# --------------------------------------------------------------------------- key-value products
KV_CHUNK = 4096  # keys per float32 chunk when the inputs are bf16/fp16 (bounds the upcast copies)


def kv_product(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Kᵀ V in float32 over the key axis: (..., k, d) -> (..., d, d). Zero (padding) rows add nothing.

    Half-precision inputs are upcast a chunk of keys at a time, so a long encoder output is never
    copied whole in float32."""
    acc = compute_dtype(keys)
    if keys.dtype == acc or keys.shape[-2] <= KV_CHUNK:
        return torch.matmul(keys.to(acc).transpose(-1, -2), values.to(acc))
    total = None
    for k, v in zip(keys.split(KV_CHUNK, dim=-2), values.split(KV_CHUNK, dim=-2)):
        part = torch.matmul(k.to(acc).transpose(-1, -2), v.to(acc))
        total = part if total is None else total + part
    return total


def key_norm(keys: torch.Tensor) -> torch.Tensor:
    """ν[c] = ||K[:, c]||₂ over the real keys (padding rows are zero) + eps: (B, H, n, d) -> (B, H, d)."""
    return torch.linalg.vector_norm(keys, dim=2, dtype=compute_dtype(keys)) + NORM_EPS


def row_gram(rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[E 1]ᵀ [E 1] over each example's real rows, float32: rows (B, 1, n, D) zero padded -> (B, D+1, D+1).

    The keys and values of any linear projection are K = [E 1] [W_k b_k]ᵀ, so P = Kᵀ V and ν follow
    from this one matrix for every layer (``products_from_gram``) without projecting the n rows."""
    gram = kv_product(rows, rows)[:, 0]  # (B, D, D)
    column_sum = rows.sum(2, dtype=gram.dtype)[:, 0]  # (B, D)
    count = lengths.to(gram.dtype)[:, None, None]
    top = torch.cat([gram, column_sum[:, :, None]], dim=2)
    bottom = torch.cat([column_sum[:, None, :], count], dim=2)
    return torch.cat([top, bottom], dim=1)


def products_from_gram(gram: torch.Tensor, key_weight: torch.Tensor, value_weight: torch.Tensor, n_heads: int):
    """P = Kᵀ V and ν = ||K[:, c]||₂ (+ eps) per head from the rows' Gram matrix.

    gram (B, D+1, D+1); key_weight/value_weight (H*d, D+1): a projection's weight with its bias as the
    last column -> P (B, H, d, d), ν (B, H, d). D³ work per layer instead of 2 n D² for projecting."""
    batch, width = gram.shape[0], gram.shape[-1]
    head_dim = key_weight.shape[0] // n_heads
    wk = key_weight.to(gram.dtype).view(n_heads, head_dim, width)  # (H, d, D+1)
    wv = value_weight.to(gram.dtype).view(n_heads, head_dim, width)
    # W_k G for every head as one GEMM, (W_k G)ᵀ = Gᵀ W_kᵀ: (B, D+1, H d) (W_k G per head with G broadcast
    # over the heads copies G H times and is ~2x slower)
    weighted = torch.matmul(gram.transpose(1, 2), wk.flatten(0, 1).t())
    weighted = weighted.view(batch, width, n_heads, head_dim).permute(0, 2, 3, 1)  # W_k G: (B, H, d, D+1)
    total = torch.matmul(weighted, wv.transpose(-1, -2))  # (B, H, d, d)
    norm = (weighted * wk).sum(-1).clamp(min=0).sqrt() + NORM_EPS  # sqrt(diag(W_k G W_kᵀ))
    return total, norm


# --------------------------------------------------------------------------- the RAF neuron
def raf_step(membrane: torch.Tensor, x: torch.Tensor, leak: torch.Tensor, threshold: torch.Tensor):
    """One Recurrent Accumulate-and-Fire step; returns (new membrane, output R).

    U <- λ U + X;  R = ReLU(U / θ - 1);  U <- U - θ [U > θ]   (the indicator passes no gradient)
    The indicator is sign(ReLU(U - θ)): on CPU a comparison plus a bool->float cast costs several times
    more than these two float kernels, and sign's gradient is zero, as the indicator's must be.
    """
    membrane = leak * membrane + x
    over = membrane - threshold
    fired = torch.relu(over / threshold)  # = ReLU(U / θ - 1)
    spiked = torch.sign(torch.relu(over))  # [U > θ]
    return membrane - threshold * spiked, fired


def raf_scan(inputs: torch.Tensor, leak: torch.Tensor, threshold: torch.Tensor,
             base: torch.Tensor | None = None) -> torch.Tensor:
    """Run the RAF from U = 0 over a sequence of inputs: (B, H, L, d, d) -> outputs R (B, H, L, d, d).

    X_l = inputs_l, or X_l = base - inputs_l when base (B, H, d, d) is given: the split that
    ``raf_input_parts`` returns, so X is never materialised. The same maths as L calls of ``raf_step``
    (``reference.raf_scan_loop`` is that loop; tests hold this one to it, gradients included), with a
    hand-written backward: autograd over the loop would record ~30 small kernels per step.
    """
    if base is None:
        return _RAFScan.apply(torch.zeros_like(inputs[:, :, 0]), -inputs, leak, threshold)
    return _RAFScan.apply(base, inputs, leak, threshold)


class _RAFScan(torch.autograd.Function):
    """The RAF scan over X_l = base - parts_l with a hand-written backward. With a_l = λ U_{l-1} + X_l
    (the membrane before firing), spike s_l = [a_l > θ] and pass p_l = [R_l > 0]:

        forward    R_l = ReLU((a_l - θ) / θ),  U_l = a_l - θ s_l
        backward   h_l = dR_l p_l + λ h_{l+1}  (h = θ dA = θ dX),  d parts_l = -h_l / θ,  d base = Σ h_l / θ
                   dλ = Σ_l dA_{l+1} U_l,  dθ = -Σ_l dR_l p_l a_l / θ² - λ Σ_l dA_{l+1} s_l

    X is never stored whole. Both loops touch one (B, H, d, d) step at a time, which stays in cache."""

    @staticmethod
    def forward(ctx, base, parts, leak, threshold):
        lam, theta = float(leak), float(threshold)
        steps = parts.shape[2]
        before_fire = parts.new_empty((steps,) + base.shape)  # a_l  (L, B, H, d, d): a step is contiguous
        spikes = torch.empty_like(before_fire)                  # s_l in {0, 1}
        fired = torch.empty_like(parts, memory_format=torch.contiguous_format)  # R (B, H, L, d, d)
        membrane = torch.zeros_like(base)
        for step in range(steps):
            a = torch.sub(base, parts[:, :, step], out=before_fire[step]).add_(membrane, alpha=lam)
            over = a - theta
            torch.div(over, theta, out=fired[:, :, step]).relu_()
            spiked = torch.sign(over.relu_(), out=spikes[step])
            membrane = torch.add(a, spiked, alpha=-theta)
        ctx.save_for_backward(before_fire, spikes, fired, leak, threshold)
        return fired

    @staticmethod
    def backward(ctx, grad_out):
        before_fire, spikes, fired, leak, threshold = ctx.saved_tensors
        lam, theta = float(leak), float(threshold)
        steps = before_fire.shape[0]
        grad_parts = torch.empty_like(fired)
        grad_base = torch.zeros_like(before_fire[0])            # Σ h_l
        dots = before_fire.new_zeros(3, steps)                  # per step: p dR . a, h' . s, h' . a
        h = torch.zeros_like(before_fire[0])                    # h_{l+1} while step l is processed
        for step in range(steps - 1, -1, -1):
            a, flat_h = before_fire[step].flatten(), h.flatten()
            local = grad_out[:, :, step] * torch.sign(fired[:, :, step])
            torch.vdot(local.flatten(), a, out=dots[0, step])
            torch.vdot(flat_h, spikes[step].flatten(), out=dots[1, step])
            torch.vdot(flat_h, a, out=dots[2, step])
            h = torch.add(local, h, alpha=lam)
            grad_base.add_(h)
            torch.div(h, -theta, out=grad_parts[:, :, step])
        fire_dot, h_dot_spike, h_dot_before = dots.sum(1)
        grad_leak = (h_dot_before - theta * h_dot_spike) / theta   # Σ dA_{l+1} (a_l - θ s_l)
        grad_threshold = -fire_dot / theta**2 - lam * h_dot_spike / theta
        return (grad_base.div_(theta), grad_parts, grad_leak.to(leak.dtype).reshape(leak.shape),
                grad_threshold.to(threshold.dtype).reshape(threshold.shape))


def raf_run(base: torch.Tensor, parts: torch.Tensor | None, leak: torch.Tensor | None,
            threshold: torch.Tensor | None, out: torch.Tensor, membrane: torch.Tensor | None = None,
            active: torch.Tensor | None = None, out_scale: torch.Tensor | None = None):
    """RAF steps l = 0..L-1 over X_l = base - parts_l (parts None: X_l = base), R_l written to out[:, l]
    (divided by ``out_scale`` where given); returns ``out`` and the membrane after the last step.

    base (B, ...); parts (B, L, ...), any strides; out (B, L, ...), any strides (a decoder passes its ring of
    R, and ν as out_scale: R ⊘ ν is what a step reads). leak/threshold: λ, θ (0-dim), or None: ablation III,
    R_l = X_l. membrane: U to continue from (default 0; not modified). active (B, L) bool: step l of example b
    happens only where True; elsewhere U is left as it was (and that R_l is not to be read).
    A decoder runs this between steps, so it is written for memory traffic: X_l, U and the step's temporaries
    are one (B, ...) block each, reused every step (they stay in cache); only parts_l is read and R_l written.
    Each step is a few float passes (λ U + X fused; the soft reset as U - θ sign(ReLU(U - θ)), as in
    ``raf_step``). ``raf_scan`` is the training path (autograd)."""
    u = torch.zeros_like(base) if membrane is None else membrane.clone()
    before, excess = torch.empty_like(base), torch.empty_like(base)
    stepped = None if active is None else torch.empty_like(base)
    fire_scale = threshold if out_scale is None or leak is None else threshold * out_scale
    for step in range(out.shape[1]):
        if parts is None:
            before.copy_(base)
        else:
            torch.sub(base, parts[:, step], out=before)  # X_l
        if leak is None:  # ablation III: R = X
            if out_scale is None:
                out[:, step].copy_(before)
            else:
                torch.div(before, out_scale, out=out[:, step])
            continue
        before.addcmul_(u, leak)  # λ U + X, the membrane before firing
        torch.sub(before, threshold, out=excess).clamp_min_(0)  # ReLU(U - θ)
        torch.div(excess, fire_scale, out=out[:, step])  # R = ReLU(U / θ - 1) (⊘ ν)
        # U - θ [U > θ], the indicator as sign(ReLU(U - θ)): float kernels only (on CPU a comparison and a
        # select over a bool mask cost several times more, as in ``raf_step``)
        torch.addcmul(before, excess.sign_(), threshold, value=-1, out=u if active is None else stepped)
        if active is not None:
            torch.where(active[:, step].view((-1,) + (1,) * (u.dim() - 1)), stepped, u, out=u)
    return out, u


def raf_input_parts(total: torch.Tensor, seg_keys: torch.Tensor | None, seg_values: torch.Tensor | None,
                    weight: torch.Tensor, clamp: float | None, total_w: torch.Tensor | None = None):
    """X_σ = C_σ Wᵀ = (P - P_σ) Wᵀ split as (base, parts): X_σ = base - parts_σ, both products linear in W.

    total: P (B, H, d, d); seg_keys/seg_values (B, H, L, S', d), or None for ablation IV (C = P: parts
    None). Without a clamp parts_σ = K_σᵀ (V_σ Wᵀ): s d² work per segment instead of s d² + d³ (the
    d x d x d product per segment dominates at small s). With a clamp (BART) P and P_σ are clamped first,
    so parts_σ = clamp(P_σ) Wᵀ. ``total_w`` = base if the caller keeps it (a decoder computes it once).
    Returns base (B, H, d, d) and parts (B, H, L, d, d) or None.
    """
    w_t = weight.to(total.dtype).t()
    if total_w is None:
        total_w = torch.matmul(total if clamp is None else total.clamp(-clamp, clamp), w_t)
    if seg_keys is None:
        return total_w, None
    if clamp is None:
        return total_w, kv_product(seg_keys, torch.matmul(seg_values.to(total.dtype), w_t))
    return total_w, torch.matmul(kv_product(seg_keys, seg_values).clamp(-clamp, clamp), w_t)


def recurrent_output(query: torch.Tensor, recurrent: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """rec = (q R) ⊘ ν. query (..., T, d) scaled; recurrent (..., d, d); norm broadcastable to the
    output with ν along the last axis, or None (ablation II)."""
    out = torch.matmul(query if query.dtype == recurrent.dtype else query.to(recurrent.dtype), recurrent)
    return out if norm is None else out / norm
