"""The SRformer cross-attention layer that T5 and BART decoders call.

``SRformerCrossAttention`` is host-agnostic: it owns W, λ, θ and calls the parallel path
(``parallel.py``) or a decoding state (``state.py``). The thin host adapters in ``hf_models.py`` give it
the host's q/k/v/o projections (under the host's own parameter names, so pretrained weights load
unchanged) and the host's forward signature.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SrsumError
from .parallel import parallel_attention
from .segments import EncoderRows, EncoderSegments
from .settings import SRformerSettings
from .state import ENCODER_ROWS, DecodeState, decoding_states


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
