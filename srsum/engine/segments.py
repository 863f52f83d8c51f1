"""The encoder side of a segmented cross-attention: readers of segments of keys and values.

``ProjectedSegments`` reads keys and values projected up front (the parallel path and a state built from
given keys/values); ``EncoderRows`` and ``EncoderSegments`` let decoding project encoder rows a segment at
a time, sharing the segmented rows and their Gram matrix between layers.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import ops
from .settings import SRformerSettings

if TYPE_CHECKING:
    from .layer import SRformerCrossAttention

_WARNED_UNVISITED: set = set()


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
