"""The SRformer cross-attention layer: the parallel (teacher-forced) path and the decoding state.

``SRformerCrossAttention`` is host-agnostic: it owns W, λ, θ and calls the pure functions of
``ops.py``. The thin host adapters in ``models.py`` give it the host's q/k/v/o projections (under the
host's own parameter names, so pretrained weights load unchanged) and the host's forward signature.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SrsumError
from . import ops
from .settings import SRformerSettings

STATE_ATTRIBUTE = "srformer_states"  # where decoding states live on a transformers cache object
ENCODER_ROWS = "encoder_rows"  # the key, in that dict of states, of the rows every layer shares
_WARNED_UNVISITED: set = set()
RAF_WINDOW = 16  # decode positions whose R a scheduled decoding state computes ahead at a time


def warn_if_segments_unvisited(settings: SRformerSettings, seg: ops.SegmentedKeys) -> None:
    """SPEC section 3: with M > G some segments are never attended locally; say so once per setting."""
    segments = seg.max_segments
    key = (settings.seg_size, settings.schedule_length)
    if segments > settings.schedule_length and key not in _WARNED_UNVISITED:
        _WARNED_UNVISITED.add(key)
        n_max = int(seg.lengths.max())
        warnings.warn(f"seg_size {settings.seg_size} splits {n_max} input tokens into {segments} segments, more "
                      f"than the schedule length G = {settings.schedule_length}: some segments are never attended "
                      f"locally (use seg_size >= {-(-n_max // settings.schedule_length)})", stacklevel=3)


# --------------------------------------------------------------------------- segment readers
class ProjectedSegments:
    """Reads segments of keys and values that were all projected up front: (B, H, n, d) each."""

    def __init__(self, keys, values, key_valid, settings: SRformerSettings):
        self.seg = ops.segment_keys(keys, values, key_valid, settings.seg_size)
        self.globals = ops.global_tokens(self.seg) if settings.attention == "global" else None

    def context(self, variant: str, segment_index: torch.Tensor):
        """(B, L) -> keys, values (B, H, L, k, d), valid (B, 1, L, 1, k): what each group attends to."""
        return ops.segment_context(self.seg, variant, segment_index, self.globals)

    def products(self):
        """P = Kᵀ V (B, H, d, d) and ν (B, H, d)."""
        return ops.kv_product(self.seg.keys, self.seg.values), ops.key_norm(self.seg.keys)


class EncoderRows:
    """The encoder output cut into segments once for every layer, with what every layer derives from
    it the same way, computed when the first layer asks: the Gram matrix and each segment's mean row.
    (B, n, D) rows, key_valid (B, n) or None."""

    def __init__(self, encoder_states: torch.Tensor, key_valid, seg_size: int):
        rows = encoder_states[:, None]  # (B, 1, n, D): one "head" of width D
        self.seg = ops.segment_keys(rows, rows, key_valid, seg_size)
        self._gram = self._mean_rows = None

    @property
    def gram(self) -> torch.Tensor:  # (B, D+1, D+1)
        if self._gram is None:
            self._gram = ops.row_gram(self.seg.keys, self.seg.lengths)
        return self._gram

    @property
    def mean_rows(self):  # (B, 1, M, D) mean real row of each segment, (B, M) which segments are real
        if self._mean_rows is None:
            mean, _, real = ops.global_tokens(self.seg)
            self._mean_rows = (mean, real)
        return self._mean_rows


class EncoderSegments:
    """Reads segments by projecting their encoder rows when the decoder reaches them.

    A decoder visits at most G segments, so this projects at most G*s rows instead of all n, holds no
    n-long keys or values, and takes P and ν from the rows' Gram matrix: D³ work per layer instead of
    the 2 n D² of projecting every key and value (layers whose projections are not plain ``nn.Linear``
    project the rows a chunk at a time instead)."""

    def __init__(self, layer: "SRformerCrossAttention", rows: EncoderRows):
        self.layer, self.rows, self.seg = layer, rows, rows.seg
        # padded rows are zero (``segment_keys``): only a projection that maps zero to non-zero (a bias, or
        # anything but a bias-free nn.Linear) needs its padded outputs masked
        self.mask_padding = not all(type(module) is nn.Linear and module.bias is None
                                    for module in (getattr(layer, name) for name in layer.projection_names[1:3]))
        self.globals = None
        if layer.settings.attention == "global":  # project each segment's mean row once (linear: = mean key)
            mean_rows, real = rows.mean_rows
            self.globals = (self._project(layer.key_proj, mean_rows), self._project(layer.value_proj, mean_rows),
                            real)

    def _project(self, projection, rows: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Rows (B, 1, ..., D) -> (B, H, ..., d); rows where ``valid`` (B, 1, ..., 1) is False become zero."""
        out = projection(rows[:, 0])
        out = out.view(*out.shape[:-1], self.layer.n_heads, self.layer.head_dim).movedim(-2, 1)
        return out * valid.to(out.dtype) if valid is not None and self.mask_padding else out

    def context(self, variant: str, segment_index: torch.Tensor):
        """As ``ProjectedSegments.context``."""
        rows, _, valid = ops.segment_context(self.seg, "segmented" if variant == "global" else variant,
                                             segment_index)  # rows (B, 1, L, k, D), valid (B, 1, L, 1, k)
        row_valid = valid.transpose(-1, -2)  # (B, 1, L, k, 1): padding rows give zero keys, even with a bias
        keys = self._project(self.layer.key_proj, rows, row_valid)
        values = self._project(self.layer.value_proj, rows, row_valid)
        if variant == "global":
            return ops.with_global_tokens(keys, values, valid[:, :, :, 0], self.globals)
        return keys, values, valid

    def products(self):
        """P = Kᵀ V (B, H, d, d) and ν (B, H, d), from the Gram matrix when the projections are linear."""
        key_weight, value_weight = self.layer.linear_weight(1), self.layer.linear_weight(2)
        if key_weight is not None and value_weight is not None:
            return ops.products_from_gram(self.rows.gram, key_weight, value_weight, self.layer.n_heads)
        total = squares = 0.0
        row_valid = self.seg.key_valid[:, None, :, None]  # (B, 1, n', 1)
        for rows, valid in zip(self.seg.keys.split(ops.KV_CHUNK, 2), row_valid.split(ops.KV_CHUNK, 2)):
            keys = self._project(self.layer.key_proj, rows, valid)  # (B, H, chunk, d)
            total = total + ops.kv_product(keys, self._project(self.layer.value_proj, rows, valid))
            squares = squares + keys.to(ops.compute_dtype(keys)).square().sum(2)
        return total, squares.sqrt() + ops.NORM_EPS


# --------------------------------------------------------------------------- decoding state
class DecodeState:
    """What one layer keeps between decode steps (SPEC section 8).

    Built once from the encoder output (the only work that grows with n); afterwards a step reads one
    segment (s x d) and one d x d matrix per head. Held once per *example*: the ``rows_per_example``
    query rows of an example (its beams) share it, since R never depends on generated tokens.
    Full attention keeps the projected keys/values (B, H, n, d); the other variants read segments
    through ``segments`` (``EncoderSegments`` from ``start_decoding``), or through a
    ``ProjectedSegments`` over the given keys/values.
    """

    def __init__(self, layer: "SRformerCrossAttention", keys, values, key_valid, rows_per_example: int,
                 segments: "ProjectedSegments | EncoderSegments | None" = None):
        settings = layer.settings
        self.settings = settings
        self.rows_per_example = rows_per_example
        self.position = 0  # next decoder position t
        self.clock = None  # with a schedule (``use_schedule``): the position as a 0-dim device tensor
        if settings.attention == "full":
            self.keys, self.values = keys.contiguous(), values.contiguous()  # (B, H, n, d)
            self.key_valid = (torch.ones(keys.shape[0], keys.shape[2], dtype=torch.bool, device=keys.device)
                              if key_valid is None else ops.every_key_if_none_real(key_valid))[:, None, None, :]
            return
        self.segments = segments or ProjectedSegments(keys, values, key_valid, settings)
        seg = self.segments.seg
        warn_if_segments_unvisited(settings, seg)
        self.device = seg.keys.device
        self.n_segments = seg.n_segments.tolist()  # host copy: the schedule is computed on the host
        self.segment = [-1] * len(self.n_segments)  # σ of the last position entered
        self.segment_index = None  # the same as a (B, 1) device tensor
        self.context = None  # keys, values, validity the current segment attends locally
        if settings.has_recurrent:
            self._kv_total = self._norm = None  # P (B, H, d, d) and ν (B, H, d): made when first read
            self.total_w = None  # P Wᵀ (clamped P for BART), computed at the first RAF step
            square = (seg.keys.shape[0], layer.n_heads, layer.head_dim, layer.head_dim)
            dtype = ops.compute_dtype(seg.keys)
            self.membrane = torch.zeros(square, dtype=dtype, device=self.device)  # U
            self.recurrent = torch.zeros(square, dtype=dtype, device=self.device)  # R of the current segment

    @property
    def kv_total(self) -> torch.Tensor:
        """P = Σ K_jᵀ V_j over every real key: (B, H, d, d)."""
        if self._kv_total is None:
            self._set_products(*self.segments.products())
        return self._kv_total

    @property
    def norm(self) -> torch.Tensor | None:
        """ν (B, H, d), or None for ablation II (no normalisation)."""
        if self._kv_total is None:
            self._set_products(*self.segments.products())
        return self._norm

    def _set_products(self, total: torch.Tensor, norm: torch.Tensor) -> None:
        self._kv_total = total
        self._norm = None if self.settings.attention == "no_norm" else norm

    def _products_from_table(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """P and ν from the projected segments of the schedule's groups, when those are every segment of
        every example (M <= G + 1): the keys are projected already, so the Gram matrix (n D² once, then D³
        per layer) would be extra work. keys/values (B, H, L, k, d), padding rows zero; groups past an
        example's own (a batch's shorter inputs) repeat segment 0 and are left out."""
        own_groups = self.group_of_step[:, -1:] + 1  # (B, 1) groups this example really has
        real = torch.arange(keys.shape[2], device=keys.device)[None, :] < own_groups  # (B, L)
        keys = keys * real[:, None, :, None, None].to(keys.dtype)
        flat_keys, flat_values = keys.flatten(2, 3), values.flatten(2, 3)  # (B, H, L k, d)
        self._set_products(ops.kv_product(flat_keys, flat_values), ops.key_norm(flat_keys))

    def use_schedule(self, layer: "SRformerCrossAttention", clock: torch.Tensor, fixed: bool = False,
                     window: int = RAF_WINDOW) -> None:
        """Precompute every position's local context so that a step finds it from ``clock`` alone.

        clock: a 0-dim long tensor on the state's device holding the position t, set by the decoder
        before each step. The schedule's groups (runs of positions with the same σ: SPEC section 3) are
        laid out now, for positions 0..G (σ stays M-1 from G on): the local context of each group
        (B, H, L, k, d), L = min(M, G + 1), or G + 1 with ``fixed`` (shapes that do not depend on n: one
        compiled graph for every input length; the groups past min(M, G + 1) are left unwritten and never
        read, so a short input projects and touches no more rows than it has). The recurrent variants run the RAF ahead of the steps a
        window of ``window`` positions at a time (``prepare_states``, called by the decoder before each
        step, host-side arithmetic): R of the groups those positions read (at most window + 1 of them) sits in a
        small ring, so R costs (window + 1) d x d matrices per head instead of one per group. A step
        then gathers its context and R with tensor indexing: no host work, no branch on whether σ
        changed, the same kernels at every t (fit for a CUDA graph or one compiled graph)."""
        self.clock = clock
        if self.settings.attention == "full":  # nothing depends on the position
            return
        settings, seg = self.settings, self.segments.seg
        groups = ops.schedule_groups(seg.n_segments, settings.schedule_length)
        self.group_of_step = groups.group_of_step  # (B, G + 1)
        table_groups = settings.schedule_length + 1 if fixed else groups.n_groups
        own = None
        if settings.has_local:
            variant = "segmented" if settings.attention == "global" else settings.attention
            own = self.segments.context(variant, groups.segment_of_group)  # (B, H, L, k, d) x2, (B, 1, L, 1, k)
            # stored group-major, (B, L, H, k, d) and (B, L, 1, 1, k), so that a step picks each example's
            # group with one index_select over the flattened (B L) rows: one contiguous copy
            self.context_table = tuple(_pad_groups(part.movedim(2, 1), table_groups) for part in own)
            self.flat_context = tuple(part.flatten(0, 1) for part in self.context_table)  # (B L, H, k, d) ...
            rows = torch.arange(groups.group_of_step.shape[0], device=self.device)[:, None]
            self.flat_group_of_step = groups.group_of_step + rows * table_groups  # (B, G + 1) b L + g(t)
        if settings.has_recurrent:
            self.window, self._n_groups = window, groups.n_groups
            self._window_start = None  # first position of the window the ring holds (host int)
            self._recurrent_rows = None
            if settings.attention != "full_product":  # parts_σ come from each group's own segment
                self._recurrent_rows = (tuple(part[:, :groups.n_groups].movedim(1, 2) for part in self.context_table[:2])
                                        if settings.attention in ("srformer", "no_norm", "no_raf")
                                        else self.segments.context("segmented", groups.segment_of_group)[:2])
            if (self._kv_total is None and self._recurrent_rows is not None
                    and seg.max_segments <= settings.schedule_length + 1):  # every segment is in the table
                self._products_from_table(*self._recurrent_rows)
            self.total_w, _ = ops.raf_input_parts(self.kv_total, None, None, layer.recurrent_w.weight,
                                                  settings.clamp)  # P Wᵀ (B, H, d, d)
            batch = self.kv_total.shape[0]
            # R ⊘ ν (column j of R divided by ν_j: a step's (q R) ⊘ ν is then one product), run ahead
            self.ring = self.kv_total.new_zeros(batch, window + 1, *self.kv_total.shape[1:])  # (B, W + 1, H, d, d)
            self.flat_ring = self.ring.flatten(0, 1)  # (B (W + 1), H, d, d): a step picks its rows from it
            self.ring_base = torch.arange(batch, device=self.device) * (window + 1)  # (B,) first ring row of b
            self.ring_row_of_offset = torch.zeros(window, batch, dtype=torch.long, device=self.device)  # (W, B)
            self._host_groups = groups.group_of_step.tolist()  # the schedule on the host (one copy, at the start)
            self._host_stepped = [-1] * batch  # per example, the last group the RAF has stepped

    def prepare(self, layer: "SRformerCrossAttention", position: int) -> None:
        """Before the step at ``position`` (positions in order): ``prepare_states`` for this layer alone."""
        prepare_states([(layer, self)], position)

    def _next_window(self, position: int) -> tuple[int, int] | None:
        """(start, stop) of the window of positions the step at ``position`` opens, or None where the ring
        already holds it (or there is no ring). Host-side arithmetic only."""
        if self.clock is None or not self.settings.has_recurrent:
            return None
        last = self.group_of_step.shape[1] - 1  # position G: σ = M - 1 from there on
        start = min(position, last) // self.window * self.window
        if start == self._window_start:
            return None
        if self._window_start is not None and start != self._window_start + self.window:
            raise ValueError(f"decode positions must be prepared in order (window {self._window_start} then {start})")
        return start, min(start + self.window, last + 1)

    def _run_raf_ahead(self, layer: "SRformerCrossAttention", wanted: torch.Tensor, active: torch.Tensor | None) -> None:
        """RAF steps over the groups ``wanted`` (B, c), R ⊘ ν into ring slots 1..c. active (B, c): which of
        those steps each example takes (None: all)."""
        keys = values = None
        if self._recurrent_rows is not None:
            read = wanted.clamp(max=self._n_groups - 1)
            keys, values = (ops.gather_segments(part, read) for part in self._recurrent_rows)  # (B, H, c, k, d)
        _, parts = ops.raf_input_parts(self.kv_total, keys, values, layer.recurrent_w.weight,
                                       self.settings.clamp, self.total_w)  # X_σ = P Wᵀ - parts_σ
        leak = threshold = None
        if self.settings.has_raf:
            leak, threshold = layer.raf_leak.to(self.total_w.dtype), layer.raf_threshold.to(self.total_w.dtype)
        norm = None if self.norm is None else self.norm[:, :, None, :]  # ν along R's columns
        _, self.membrane = ops.raf_run(self.total_w, None if parts is None else parts.movedim(2, 1), leak, threshold,
                                       self.ring[:, 1:wanted.shape[1] + 1], self.membrane, active, norm)

    def skip_to(self, layer: "SRformerCrossAttention", position: int) -> None:
        """Advance to ``position`` without attending (after a teacher-forced prefill of the positions before)."""
        for t in range(self.position, position):  # host loop; the RAF steps only where σ changes
            self.enter(layer, t)
        self.position = position

    def enter(self, layer: "SRformerCrossAttention", position: int) -> None:
        """Make position t current: move each example to σ(t), stepping the RAF where σ changed.
        Full attention has no segments: nothing to do."""
        if self.settings.attention == "full":
            return
        schedule = self.settings.schedule_length
        new = [min(m - 1, position * m // schedule) for m in self.n_segments]
        changed = [a != b for a, b in zip(new, self.segment)]
        if not any(changed):
            return
        self.segment = new
        self.segment_index = torch.tensor(new, device=self.device)[:, None]  # (B, 1)
        if self.settings.has_local:  # read the segment once per change, reuse it until σ moves on
            self._store_context(self.segments.context(self.settings.attention, self.segment_index))
        if self.settings.has_recurrent:
            self._step_recurrent(layer, None if all(changed) else torch.tensor(changed, device=self.device))

    def _step_recurrent(self, layer: "SRformerCrossAttention", changed: torch.Tensor | None) -> None:
        """Step the RAF of the examples whose segment changed ((B,) bool, or None for all of them)."""
        keys = values = None
        if self.settings.attention != "full_product":  # recurrent variants attend only their own segment
            context = self.context if self.settings.has_local else self.segments.context("segmented",
                                                                                         self.segment_index)
            keys, values = context[:2]  # (B, H, 1, S', d)
        self.total_w, parts = ops.raf_input_parts(self.kv_total, keys, values, layer.recurrent_w.weight,
                                                  self.settings.clamp, self.total_w)  # P Wᵀ: computed once
        x = self.total_w if parts is None else self.total_w - parts[:, :, 0]  # X_σ (B, H, d, d)
        if self.settings.has_raf:
            membrane, fired = ops.raf_step(self.membrane, x, layer.raf_leak.to(x.dtype), layer.raf_threshold.to(x.dtype))
        else:
            membrane, fired = self.membrane, x
        if changed is None:
            self.membrane = membrane
            self.recurrent.copy_(fired)
        else:
            keep = changed[:, None, None, None]
            self.membrane = torch.where(keep, membrane, self.membrane)
            self.recurrent.copy_(torch.where(keep, fired, self.recurrent))

    def _store_context(self, context) -> None:
        """Keep the local context in the same tensors from the first segment on (a captured step reads them)."""
        if self.context is None:
            self.context = tuple(part.clone(memory_format=torch.contiguous_format) for part in context)
        else:
            for buffer, part in zip(self.context, context):
                buffer.copy_(part)

    def step_inputs(self) -> list[torch.Tensor]:
        """The tensors a step reads (updated in place, never replaced, while decoding runs)."""
        if self.settings.attention == "full":
            return [self.keys, self.values, self.key_valid]
        if self.clock is not None:
            tensors = [self.clock, self.group_of_step] + list(getattr(self, "flat_context", ()))
            if self.settings.has_local:
                tensors.append(self.flat_group_of_step)
            if self.settings.has_recurrent:
                tensors += [self.flat_ring, self.ring_row_of_offset]
            if self.settings.attention == "global":
                tensors += list(self.segments.globals)
            return tensors
        tensors = list(self.context) if self.context is not None else []
        if self.settings.has_recurrent:
            tensors += [self.recurrent] + ([] if self.norm is None else [self.norm])
        return tensors

    def attend(self, layer: "SRformerCrossAttention", query: torch.Tensor) -> torch.Tensor:
        """One decoder position: query (B, H, k, d) scaled, k = rows per example -> (B, H, k, d) float32.

        With a schedule (``use_schedule``) the decoder owns the position (``clock``) and this only reads
        precomputed tables: a step without host-side work, fit for a CUDA graph. Otherwise the position
        is kept here and entered on the host (``enter``)."""
        if self.settings.attention == "full":
            if self.clock is None:
                self.position += 1
            return ops.softmax_attention(query, self.keys, self.values, self.key_valid)
        norm = None
        if self.clock is None:
            self.enter(layer, self.position)
            self.position += 1
            context = None if self.context is None else tuple(part[:, :, 0] for part in self.context)  # (B, H, k', d)
            recurrent = getattr(self, "recurrent", None)
            if self.settings.has_recurrent and self.norm is not None:
                norm = self.norm[:, :, None, :]
        else:
            context, recurrent = self._scheduled_reads()  # R ⊘ ν: the scheduled ring holds R with ν applied
        out = 0.0
        if self.settings.has_local:
            keys, values, valid = context  # (B, H, k', d) x2, (B, 1, 1, k')
            out = ops.softmax_attention(query, keys, values, valid)
        if self.settings.has_recurrent:
            out = out + ops.recurrent_output(query, recurrent, norm)
        return out

    def _scheduled_reads(self):
        """The local context (B, H, k', d) x2, (B, 1, 1, k') and R ⊘ ν (B, H, d, d) of position ``clock``."""
        context = recurrent = None
        if self.settings.has_local:
            last = self.flat_group_of_step.shape[1] - 1
            rows = self.flat_group_of_step.index_select(1, self.clock.clamp(max=last).view(1)).view(-1)  # (B,)
            context = tuple(part.index_select(0, rows) for part in self.flat_context)
            if self.settings.attention == "global":
                keys, values, valid = (part.unsqueeze(2) for part in context)  # one group
                context = tuple(part[:, :, 0] for part in
                                ops.with_global_tokens(keys, values, valid[:, :, :, 0], self.segments.globals))
        if self.settings.has_recurrent:
            last = self.group_of_step.shape[1] - 1
            offset = self.clock.clamp(max=last).remainder(self.window).view(1)
            rows = self.ring_row_of_offset.index_select(0, offset).view(-1)  # (B,) ring row of each example
            recurrent = self.flat_ring.index_select(0, rows)  # R ⊘ ν (B, H, d, d)
        return context, recurrent


def prepare_states(pairs: list[tuple["SRformerCrossAttention", DecodeState]], position: int) -> None:
    """Before the step at ``position`` (positions in order), for the scheduled states of one decoding
    (every layer's: they share the schedule, so the host works it out once): when that step starts a new
    window, run the RAF over the groups the window reads and put their R ⊘ ν in each state's ring (slots 1..;
    slot 0 keeps that of the group stepped last, still read at the window's start; ``ring_row_of_offset``
    maps t - start to each example's ring row). Host-side arithmetic only (no device sync).
    """
    windows = [(layer, state, state._next_window(position)) for layer, state in pairs]
    states = [(layer, state) for layer, state, window in windows if window is not None]
    if not states:
        return
    first = states[0][1]
    start, stop = next(window for _, _, window in windows if window is not None)
    if any(window not in (None, (start, stop)) for _, _, window in windows) or any(
            state._host_stepped != first._host_stepped for _, state in states):
        raise ValueError("prepare_states: the decoding states do not share one schedule")
    groups = first.group_of_step[:, start:stop]  # (B, T') non-decreasing, at most one new group per position
    previous = torch.tensor(first._host_stepped, device=first.device)  # (B,) a host-to-device copy, no sync
    # how many RAF steps the example that moves most needs: from the host copy of the schedule
    moves = [row[stop - 1] - done for row, done in zip(first._host_groups, first._host_stepped)]
    count = max(moves)
    stepped = [row[stop - 1] for row in first._host_groups]
    slots = (groups - previous[:, None]).clamp(min=0)  # (B, T') ring slot per position
    slots = torch.cat([slots, slots[:, -1:].expand(-1, first.window - slots.shape[1])], 1)  # (B, W)
    rows = (slots + first.ring_base[:, None]).t()  # (W, B) ring row per offset t - start and example
    for _, state in states:
        state._window_start, state._host_stepped = start, stepped
        if start:  # the group stepped last may still be read at ``start``: its R moves to slot 0
            state.ring[:, 0].copy_(state.flat_ring.index_select(0, state._last_row))
    if count:
        wanted = previous[:, None] + torch.arange(1, count + 1, device=first.device)  # (B, count)
        # examples that move less than ``count`` stop early (None: every example takes every step)
        active = None if min(moves) == count else wanted <= groups[:, -1:]
        with torch.no_grad():  # decoding: R is read, never differentiated
            for layer, state in states:
                state._run_raf_ahead(layer, wanted, active)
    for _, state in states:
        state.ring_row_of_offset.copy_(rows)
        state._last_row = rows[-1]  # (B,) where the R of the window's last group now is


def _pad_groups(table: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, L, ...) -> a contiguous (B, groups, ...) whose first L groups are ``table``: ``fixed`` tables.
    The groups past L are never read (no position belongs to them), so they are left unwritten: a large
    allocation's untouched pages cost neither time nor resident memory."""
    if groups <= table.shape[1]:
        return table.contiguous()
    out = table.new_empty((table.shape[0], groups) + table.shape[2:])
    out[:, :table.shape[1]] = table
    return out


# --------------------------------------------------------------------------- the layer
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


class SRformerCrossAttention(nn.Module):
    """Decoder cross-attention with SRformer's variants. Subclasses bind the host's projections.

    Subclasses set the projections as attributes under the host's names, list those names in
    ``projection_names`` and implement the host's ``forward``.
    """

    family: str = ""

    def __init__(self, settings: SRformerSettings, n_heads: int, head_dim: int, scale: float, dropout: float,
                 layer_idx: int | None, init_std: float):
        super().__init__()
        self.settings = settings
        self.n_heads, self.head_dim, self.scale = n_heads, head_dim, scale
        self.dropout = dropout
        self.layer_idx = layer_idx
        self.init_std = init_std
        self.observer = None  # called as observer(layer, query, keys, values, key_valid) before a parallel pass
        if settings.has_recurrent:
            self.recurrent_w = nn.Linear(head_dim, head_dim, bias=False)  # W, shared by all heads
        if settings.has_raf:
            self.raf_leak = nn.Parameter(torch.tensor(float(settings.leak_init)))  # λ
            self.raf_threshold = nn.Parameter(torch.tensor(float(settings.threshold_init)))  # θ
        self.reset_srformer_parameters()

    def reset_srformer_parameters(self, initializer=None) -> None:
        """W ~ N(0, init_std) (the host's linear init), λ and θ to their initial values."""
        init = initializer or torch.nn.init
        with torch.no_grad():
            if self.settings.has_recurrent and self.recurrent_w.weight.device.type != "meta":
                init.normal_(self.recurrent_w.weight, mean=0.0, std=self.init_std)
            if self.settings.has_raf and self.raf_leak.device.type != "meta":
                init.constant_(self.raf_leak, float(self.settings.leak_init))
                init.constant_(self.raf_threshold, float(self.settings.threshold_init))

    def extra_repr(self) -> str:
        s = self.settings
        return f"attention={s.attention}, seg_size={s.seg_size}, schedule_length={s.schedule_length}"

    # ---- the host's projections, by the names the host gives them (query, key, value, output)
    projection_names: tuple[str, str, str, str] = ("", "", "", "")

    def query_proj(self, x):
        return getattr(self, self.projection_names[0])(x)

    def key_proj(self, x):
        return getattr(self, self.projection_names[1])(x)

    def value_proj(self, x):
        return getattr(self, self.projection_names[2])(x)

    def output_proj(self, x):
        return getattr(self, self.projection_names[3])(x)

    def linear_weight(self, which: int) -> torch.Tensor | None:
        """[W b] (out, in + 1) of projection ``which`` (0 q, 1 k, 2 v, 3 o) when it is a plain
        ``nn.Linear`` (b = 0 without a bias); None for anything else (quantised, adapters, ...)."""
        module = getattr(self, self.projection_names[which])
        if type(module) is not nn.Linear:
            return None
        bias = module.bias if module.bias is not None else module.weight.new_zeros(module.weight.shape[0])
        return torch.cat([module.weight, bias[:, None]], dim=1)

    # ---- shared forward
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H*d) -> (B, H, T, d)."""
        return x.view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, hidden_states: torch.Tensor, encoder_states: torch.Tensor, mask, cache) -> torch.Tensor:
        """hidden_states (Bq, T, D) decoder side; encoder_states (B, n, D) -> (Bq, T, D).

        Without a cache (or in training) all T positions are computed at once; with a cache the layer
        keeps a DecodeState on it and each call advances the decoder by T positions.
        """
        if self.family == "t5" and hidden_states.dtype == torch.float16:
            raise SrsumError("dtype: float16 overflows in T5-family models; use bfloat16 (or float32)")
        query = self._heads(self.query_proj(hidden_states))  # (Bq, H, T, d)
        if self.scale != 1.0:  # (T5 does not scale)
            query = query * self.scale
        steps = query.shape[2]
        states = None if (cache is None or self.training) else decoding_states(cache)
        state = None if states is None else states.get(self.layer_idx)
        if state is None:
            key_valid = key_padding_mask(mask, encoder_states.shape[0], encoder_states.shape[1])
            rows_per_example = hidden_states.shape[0] // encoder_states.shape[0]
            if states is None or (steps > 1 and rows_per_example == 1):  # teacher forcing or a prefill
                out = self._parallel(query, encoder_states, key_valid)
                if states is not None:
                    state = states[self.layer_idx] = self.start_decoding(encoder_states, key_valid, 1, states)
                    state.skip_to(self, steps)
                return self.output_proj(self._merge(out, hidden_states.dtype))
            state = states[self.layer_idx] = self.start_decoding(encoder_states, key_valid, rows_per_example, states)
        if steps == 1 and state.rows_per_example == 1:  # one position, one row per example: the state's layout
            out = state.attend(self, query)
        else:
            out = torch.stack([self._decode_one(state, query[:, :, i]) for i in range(steps)], dim=2)
        return self.output_proj(self._merge(out, hidden_states.dtype))

    def _keys_values(self, encoder_states: torch.Tensor):
        """(B, n, D) -> keys, values (B, H, n, d)."""
        return self._heads(self.key_proj(encoder_states)), self._heads(self.value_proj(encoder_states))

    def _parallel(self, query, encoder_states, key_valid) -> torch.Tensor:
        keys, values = self._keys_values(encoder_states)
        if self.observer is not None:  # calibration or diagnostics (srsum.engine.calibration)
            self.observer(self, query, keys, values, key_valid)
        try:
            return parallel_attention(query, keys, values, key_valid, self.settings, self, self.dropout,
                                      self.training)
        except ValueError as error:
            raise SrsumError(str(error)) from None

    def start_decoding(self, encoder_states: torch.Tensor, key_valid: torch.Tensor | None,
                       rows_per_example: int = 1, shared: dict | None = None) -> DecodeState:
        """A decoding state for this layer from the encoder output (B, n, D), held once per example.

        Full attention projects all keys and values now; the other variants read encoder rows a segment
        at a time (``EncoderSegments``), so no n-long keys or values exist and a step's work is the same
        at every n (even where the schedule reads every segment, and projecting all keys up front would
        spare the first step the Gram matrix's D³ per layer).
        ``shared`` (a dict that lives as long as the decoding, the same for every layer) keeps the
        segmented encoder rows and their Gram matrix, so they are made once for all layers."""
        try:
            if self.settings.attention == "full":
                keys, values = self._keys_values(encoder_states)
                return DecodeState(self, keys, values, key_valid, rows_per_example)
            shared = {} if shared is None else shared
            rows = shared.get(ENCODER_ROWS)
            if rows is None:
                rows = shared[ENCODER_ROWS] = EncoderRows(encoder_states, key_valid, self.settings.seg_size)
            return DecodeState(self, None, None, key_valid, rows_per_example, EncoderSegments(self, rows))
        except ValueError as error:
            raise SrsumError(str(error)) from None

    def _decode_one(self, state: DecodeState, query: torch.Tensor) -> torch.Tensor:
        """query (Bq, H, d) for one position -> (Bq, H, d); beams of an example share the state."""
        rows, heads, dim = query.shape
        k = state.rows_per_example
        grouped = query.view(rows // k, k, heads, dim).transpose(1, 2)  # (B, H, k, d)
        out = state.attend(self, grouped)
        return out.transpose(1, 2).reshape(rows, heads, dim)

    def _merge(self, out: torch.Tensor, dtype) -> torch.Tensor:
        """(B, H, T, d) -> (B, T, H*d) in the model's dtype."""
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        return out if out.dtype == dtype else out.to(dtype)


def decoding_states(cache) -> dict:
    """The per-layer decoding states kept on a transformers cache object (made empty on first use)."""
    states = getattr(cache, STATE_ATTRIBUTE, None)
    if states is None:
        states = {}
        setattr(cache, STATE_ATTRIBUTE, states)
    return states


def held_tensors(obj) -> list[torch.Tensor]:
    """Every tensor reachable from obj through attributes, lists, tuples and dicts (modules excluded), each once."""
    found, stack, seen = [], [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (nn.Module, type)):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif hasattr(item, "__dict__"):
            stack.extend(vars(item).values())
    return found


def key_padding_mask(mask, batch: int, n_keys: int) -> torch.Tensor | None:
    """(B, n) bool 'is a real key' from the host's cross-attention mask (None: every key is real).

    transformers gives either a boolean mask (True = attend) or an additive float mask (0 = attend),
    4-D (B or 1, 1, T or 1, n) or 2-D (B, n).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise SrsumError("attention: SRformer needs the 'eager' or 'sdpa' attention implementation")
    if mask.dim() == 4:
        mask = mask[:, 0, -1, :]
    valid = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return valid.expand(batch, n_keys)
