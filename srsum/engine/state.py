"""The decoding state one cross-attention layer keeps between decode steps (SPEC section 8), and the
helpers that prepare the scheduled states of a decoding and find them on a transformers cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from . import ops
from .segments import EncoderSegments, ProjectedSegments, warn_if_segments_unvisited

if TYPE_CHECKING:
    from .layer import SRformerCrossAttention

STATE_ATTRIBUTE = "srformer_states"  # where decoding states live on a transformers cache object
ENCODER_ROWS = "encoder_rows"  # the key, in that dict of states, of the rows every layer shares
RAF_WINDOW = 16  # decode positions whose R a scheduled decoding state computes ahead at a time


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
