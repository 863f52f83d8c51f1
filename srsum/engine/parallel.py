"""The parallel (teacher-forced) path: cross-attention for every decoder position at once (SPEC section 8),
used in training, in a prefill and by calibration."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .segments import warn_if_segments_unvisited
from .settings import SRformerSettings


def parallel_attention(query, keys, values, key_valid, settings: SRformerSettings, layer, dropout=0.0,
                       training=False) -> torch.Tensor:
    """Teacher-forced cross-attention for decoder positions 0..T-1, vectorised (SPEC section 8).

    query (B, H, T, d) scaled; keys/values (B, H, n, d); key_valid (B, n) bool or None -> (B, H, T, d)
    in the compute dtype (float32, or float64 for float64 inputs).
    """
    if settings.attention == "full":
        valid = (torch.ones_like(keys[:, 0, :, 0], dtype=torch.bool) if key_valid is None
                 else ops.every_key_if_none_real(key_valid))
        return ops.softmax_attention(query, keys, values, valid[:, None, None, :], dropout, training)
    terms = parallel_terms(query, keys, values, key_valid, settings, layer, dropout, training)
    out = terms.local if terms.rec is None else terms.rec if terms.local is None else terms.local + terms.rec
    return ops.from_groups(out, terms.groups)


@dataclass
class ParallelTerms:
    """Both terms of the output for all positions in the grouped layout (B, H, L, S, d), with what they
    were made from: what calibration and diagnostics look at. A term the variant lacks is None."""

    groups: ops.StepGroups
    grouped_query: torch.Tensor  # (B, H, L, S, d)
    local: torch.Tensor | None = None
    rec: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None  # R (B, H, L, d, d)
    raf_inputs: tuple | None = None  # X_l = base - parts_l: base (B, H, d, d), parts (B, H, L, d, d)
    norm: torch.Tensor | None = None  # ν (B, H, 1, 1, d), None for ablation II


def parallel_terms(query, keys, values, key_valid, settings: SRformerSettings, layer, dropout=0.0,
                   training=False, local_reference: bool = False) -> ParallelTerms:
    """local_t and rec_t for every position of a segmented variant. ``local_reference`` computes the plain
    segment softmax even for a variant without one (ablation I), as the yardstick the recurrent term is
    measured against."""
    seg = ops.segment_keys(keys, values, key_valid, settings.seg_size)
    warn_if_segments_unvisited(settings, seg)
    positions = torch.arange(query.shape[2], device=query.device)
    groups = ops.group_steps(ops.segment_of_step(positions, seg.n_segments, settings.schedule_length))
    terms = ParallelTerms(groups, ops.to_groups(query, groups))
    if settings.has_local or local_reference:
        variant = settings.attention if settings.has_local else "segmented"
        keys_g, values_g, valid_g = ops.segment_context(seg, variant, groups.segment_of_group)
        terms.local = ops.softmax_attention(terms.grouped_query, keys_g, values_g, valid_g, dropout, training)
    if settings.has_recurrent:
        terms.raf_inputs = recurrent_inputs(seg, groups.segment_of_group, settings, layer)
        terms.recurrent = recurrent_from_inputs(*terms.raf_inputs, settings, layer)
        terms.norm = None if settings.attention == "no_norm" else ops.key_norm(seg.keys)[:, :, None, None, :]
        terms.rec = ops.recurrent_output(terms.grouped_query, terms.recurrent, terms.norm)
    return terms


def recurrent_sequence(seg: ops.SegmentedKeys, segment_of_group, settings: SRformerSettings, layer):
    """R for every group (RAF step) of the batch: (B, L) segment indices -> (B, H, L, d, d)."""
    base, parts = recurrent_inputs(seg, segment_of_group, settings, layer)
    return recurrent_from_inputs(base, parts, settings, layer)


def recurrent_inputs(seg: ops.SegmentedKeys, segment_of_group, settings: SRformerSettings, layer):
    """The RAF inputs X_l = base - parts_l (both linear in W): base (B, H, d, d), parts (B, H, L, d, d)."""
    total = ops.kv_product(seg.keys, seg.values)  # P: (B, H, d, d)
    keys = values = None
    if settings.attention != "full_product":
        keys = ops.gather_segments(seg.segment_view(seg.keys), segment_of_group)  # (B, H, L, S', d)
        values = ops.gather_segments(seg.segment_view(seg.values), segment_of_group)
    base, parts = ops.raf_input_parts(total, keys, values, layer.recurrent_w.weight, settings.clamp)
    if parts is None:  # ablation IV: X_σ = P Wᵀ at every step
        parts = torch.zeros_like(base)[:, :, None].expand(-1, -1, segment_of_group.shape[1], -1, -1)
    return base, parts


def recurrent_from_inputs(base, parts, settings: SRformerSettings, layer):
    """R_l from X_l = base - parts_l: the RAF scan, or X itself for ablation III."""
    if not settings.has_raf:
        return base[:, :, None] - parts  # ablation III: R_σ = X_σ
    return ops.raf_scan(parts, layer.raf_leak.to(base.dtype), layer.raf_threshold.to(base.dtype), base=base)
