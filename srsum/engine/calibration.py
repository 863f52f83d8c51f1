"""Calibrated conversion and memory diagnostics (SPEC section 5, "calibrated init").

Right after conversion with the paper's init, the recurrent term ``rec = (q R) ⊘ ν`` of a pretrained
model is hundreds of times larger than the local softmax term it is added to, and fine-tuning never
recovers (docs/RESULTS.md). :func:`calibrate` fixes the scale per layer: it runs the model once on a
calibration batch and, layer by layer in decoder order (each layer sees the already calibrated layers
before it), multiplies W by the factor c for which ||rec|| = r · ||local|| on that batch, r being the
config field ``srformer_memory_ratio``. R = ReLU(U/θ - 1) depends on W only through U/θ, so the search is
a one-dimensional bisection in log c. What it chose is recorded in ``config.srformer_calibration``;
W itself is a weight, so a saved and reloaded model is the same model.

:func:`memory_report` measures, per decoder layer, the ratio ||rec|| / ||local|| and the RAF firing rate
(the share of R's entries above zero) on a batch: whether the memory is alive. Both it and the calibration
record also give ``clamp_saturation``, the share of P = Σ_j K_jᵀ V_j's entries beyond the products' clamp
(BART's ±2; None without a clamp): near 1, clamp(P) - clamp(P_σ) is little more than a sign pattern.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import replace

import torch

from . import ops
from .layer import SRformerCrossAttention
from .parallel import parallel_terms, recurrent_from_inputs

FALLBACK_SOURCE_LENGTH = 512  # tokens per example of the fallback batch (capped by the model's positions)
FALLBACK_EXAMPLES = 2
FALLBACK_SEED = 0
SCALE_RANGE = (1e-12, 1e12)  # the factors the search may choose from
BISECTION_STEPS = 40
DEAD_RATIO = 1e-3  # a layer whose recurrent term is below this share of the local term is "dead"
CLAMP_SATURATED = 0.5  # a layer with more than this share of P beyond the clamp carries little in its memory


def srformer_layers(model) -> list[SRformerCrossAttention]:
    """The model's SRformer cross-attention layers, in decoder order."""
    return [m for m in model.modules() if isinstance(m, SRformerCrossAttention)]


# --------------------------------------------------------------------------- the calibration batch
def calibration_inputs(model, batch=None) -> tuple[dict, str]:
    """Model inputs (input_ids, attention_mask, decoder_input_ids) from ``batch``, and where they came from.

    ``batch``: a mapping or object with ``input_ids`` and optionally ``attention_mask`` and
    ``decoder_input_ids`` or ``labels`` (shifted right as the model does in training). Without a batch,
    the documented fallback: FALLBACK_EXAMPLES rows of FALLBACK_SOURCE_LENGTH random token ids (fixed
    seed), which stand in for a document; a real batch is better (``srsum train`` uses its first one)."""
    if batch is None:
        return _fallback_inputs(model), "fallback"
    get = batch.get if isinstance(batch, Mapping) else (lambda key: getattr(batch, key, None))
    device = next(model.parameters()).device
    input_ids = get("input_ids")
    if input_ids is None:
        raise ValueError("calibration batch: needs input_ids")
    inputs = {"input_ids": input_ids.to(device)}
    if get("attention_mask") is not None:
        inputs["attention_mask"] = get("attention_mask").to(device)
    decoder_ids = get("decoder_input_ids")
    if decoder_ids is None and get("labels") is not None:
        labels = get("labels").to(device)
        labels = labels.masked_fill(labels == -100, model.config.pad_token_id)
        decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    if decoder_ids is None:
        decoder_ids = _random_decoder_ids(model, input_ids.shape[0])
    inputs["decoder_input_ids"] = decoder_ids.to(device)
    return inputs, "batch"


def _fallback_inputs(model) -> dict:
    config = model.config
    length = min(FALLBACK_SOURCE_LENGTH,  # no longer than the schedule visits (M <= G) or the model takes
                 int(config.srformer_seg_size) * int(config.srformer_schedule_length),
                 getattr(config, "max_position_embeddings", None) or FALLBACK_SOURCE_LENGTH)
    generator = torch.Generator().manual_seed(FALLBACK_SEED)
    input_ids = torch.randint(_first_plain_token(config), config.vocab_size, (FALLBACK_EXAMPLES, length),
                              generator=generator)
    device = next(model.parameters()).device
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device),
            "decoder_input_ids": _random_decoder_ids(model, FALLBACK_EXAMPLES).to(device)}


def _random_decoder_ids(model, rows: int) -> torch.Tensor:
    config = model.config
    length = int(getattr(config, "srformer_schedule_length", 128))
    generator = torch.Generator().manual_seed(FALLBACK_SEED + 1)
    ids = torch.randint(_first_plain_token(config), config.vocab_size, (rows, length), generator=generator)
    ids[:, 0] = config.decoder_start_token_id
    return ids


def _first_plain_token(config) -> int:
    special = [t for t in (config.pad_token_id, config.eos_token_id, getattr(config, "bos_token_id", None),
                           config.decoder_start_token_id) if isinstance(t, int)]
    return min(max(special, default=-1) + 1, config.vocab_size - 1)


@contextmanager
def observing(layers, observer):
    """Call ``observer(layer, query, keys, values, key_valid)`` from each layer's parallel pass."""
    for layer in layers:
        layer.observer = observer
    try:
        yield
    finally:
        for layer in layers:
            layer.observer = None


@torch.no_grad()
def _run(model, inputs: dict) -> None:
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():  # a schedule warning here is about the calibration batch, not the user's
            warnings.simplefilter("ignore", UserWarning)
            model(**inputs, use_cache=False)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- one layer
class _LayerProbe:
    """The local term and the RAF inputs of one layer on a batch, to evaluate rec at any W scale."""

    def __init__(self, layer: SRformerCrossAttention, query, keys, values, key_valid):
        self.layer, self.settings = layer, layer.settings
        self.terms = parallel_terms(query, keys, values, key_valid, layer.settings, layer, local_reference=True)
        groups = self.terms.groups
        self.local_norm = float(ops.from_groups(self.terms.local, groups).norm())
        # groups each example really has (shorter inputs have fewer segments than the batch's longest)
        last_group = groups.group_of_step[:, -1]  # (B,)
        steps = torch.arange(groups.n_groups, device=last_group.device)
        self.real_groups = steps[None, :] <= last_group[:, None]  # (B, L)
        # share of P = Σ_j K_jᵀ V_j (valid keys, per example and head) beyond the clamp (None: no clamp)
        self.clamp_saturation = None
        if self.settings.clamp is not None:
            if key_valid is not None:
                keys = keys.masked_fill(~key_valid.bool()[:, None, :, None], 0)
            self.clamp_saturation = float((ops.kv_product(keys, values).abs() > self.settings.clamp).float().mean())

    def recurrent(self, scale: float) -> torch.Tensor:
        """R with W scaled by ``scale``: the RAF inputs are linear in W."""
        if scale == 1.0:
            return self.terms.recurrent
        base, parts = self.terms.raf_inputs
        return recurrent_from_inputs(base * scale, parts * scale, self.settings, self.layer)

    def ratio(self, scale: float = 1.0) -> float:
        rec = ops.recurrent_output(self.terms.grouped_query, self.recurrent(scale), self.terms.norm)
        return float(ops.from_groups(rec, self.terms.groups).norm()) / max(self.local_norm, 1e-30)

    def firing_rate(self, scale: float = 1.0) -> float | None:
        """Share of R's entries above zero over the RAF steps the batch really takes (None: no RAF)."""
        if not self.settings.has_raf:
            return None
        fired = (self.recurrent(scale) > 0).float()  # (B, H, L, d, d)
        real = self.real_groups[:, None, :, None, None].expand_as(fired)
        return float(fired[real].mean())

    def scale_for(self, target: float) -> float:
        """The W factor c with ratio(c) = target (bisection in log c; ratio grows with c)."""
        lo, hi = SCALE_RANGE
        c = 1.0
        value = self.ratio(c)
        if value == target:
            return c
        # bracket: walk by factors of 10 from c = 1 towards the target
        step = 10.0 if value < target else 0.1
        while lo <= c <= hi:
            nxt = c * step
            nxt_value = self.ratio(nxt)
            if (nxt_value >= target) == (step > 1):
                lo_c, hi_c = (c, nxt) if step > 1 else (nxt, c)
                break
            c = nxt
        else:
            return min(max(c, lo), hi)
        for _ in range(BISECTION_STEPS):
            mid = math.sqrt(lo_c * hi_c)
            if self.ratio(mid) < target:
                lo_c = mid
            else:
                hi_c = mid
        return math.sqrt(lo_c * hi_c)


# --------------------------------------------------------------------------- the model
def needs_calibration(model) -> bool:
    layers = [layer for layer in srformer_layers(model) if layer.settings.has_recurrent]
    return bool(layers) and layers[0].settings.w_init == "calibrated"


def calibrate(model, batch=None, ratio: float | None = None) -> dict:
    """Scale each SRformer layer's W so that ||rec|| ≈ ratio · ||local|| on ``batch`` (see the module doc).

    ratio: default the model's ``srformer_memory_ratio``. Returns the record saved in
    ``config.srformer_calibration``: the target, the source of the batch, per layer the factor applied,
    the ratio before and after, the firing rate after and the clamp saturation. Models without a recurrent
    term are left alone (an empty record)."""
    layers = [layer for layer in srformer_layers(model) if layer.settings.has_recurrent]
    if not layers:
        return {}
    settings = layers[0].settings
    target = float(settings.memory_ratio if ratio is None else ratio)
    if not target > 0:
        raise ValueError(f"memory ratio must be positive, got {target}")
    inputs, source = calibration_inputs(model, batch)
    per_layer: list[dict] = []

    def observer(layer, query, keys, values, key_valid):
        probe = _LayerProbe(layer, query, keys, values, key_valid)
        before = probe.ratio(1.0)
        scale = probe.scale_for(target)
        with torch.no_grad():
            layer.recurrent_w.weight.mul_(scale)
        per_layer.append({"layer": len(per_layer), "scale": scale, "ratio_before": before,
                          "ratio": probe.ratio(scale), "firing_rate": probe.firing_rate(scale),
                          "clamp_saturation": probe.clamp_saturation})

    with observing(layers, observer):
        _run(model, inputs)
    record = {"memory_ratio": target, "source": source, "examples": int(inputs["input_ids"].shape[0]),
              "source_tokens": int(inputs["input_ids"].shape[1]),
              "layers": [{k: (float(f"{v:.7g}") if isinstance(v, float) else v) for k, v in row.items()}
                         for row in per_layer]}
    _record(model, layers, record)
    return record


def _record(model, layers, record: dict) -> None:
    new_settings = replace(layers[0].settings, calibration=record)
    for layer in srformer_layers(model):
        layer.settings = new_settings
    model.config.srformer_calibration = record


def memory_report(model, batch=None) -> list[dict]:
    """Per SRformer layer with a recurrent term: ``ratio`` (||rec|| / ||local|| over every decoder position
    of the batch), ``firing_rate`` (share of R's entries > 0; None for ablation III) and ``clamp_saturation``
    (share of P's entries beyond the clamp; None without one). Changes nothing."""
    layers = [layer for layer in srformer_layers(model) if layer.settings.has_recurrent]
    if not layers:
        return []
    inputs, _ = calibration_inputs(model, batch)
    rows: list[dict] = []

    def observer(layer, query, keys, values, key_valid):
        probe = _LayerProbe(layer, query, keys, values, key_valid)
        rows.append({"layer": len(rows), "ratio": probe.ratio(), "firing_rate": probe.firing_rate(),
                     "clamp_saturation": probe.clamp_saturation})

    with observing(layers, observer):
        _run(model, inputs)
    return rows


def dead_layers(report: list[dict]) -> list[int]:
    """Layers whose memory passes nothing on: ratio below DEAD_RATIO or a firing rate of zero."""
    return [row["layer"] for row in report
            if row["ratio"] < DEAD_RATIO or (row["firing_rate"] is not None and row["firing_rate"] == 0)]
