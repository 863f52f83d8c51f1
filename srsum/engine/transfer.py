"""Attention transfer (SPEC section 5, "Attention transfer"): teach W, λ and θ alone to reproduce the full
cross-attention that SRformer replaced, before (or instead of) fine-tuning.

While the model runs teacher-forced, every SRformer layer :func:`teaching` returns the *full* cross-attention
output, so each decoder layer's input h_l is the original model's, and records its own SRformer output on the
same (h_l, encoder states) beside it. The loss is, per layer, the relative squared error per decoder position
(padded positions excluded), summed over layers:

    loss = Σ_l mean_t || pred_l,t - target_l,t ||² / || target_l,t ||²

Both outputs go through the layer's own (frozen) output projection, so the error is measured where the layer
hands its result to the residual stream. Only W, λ and θ train; a layer's error never feeds the next layer.
Decoder inputs are the labels where a batch has them, else the full model's own greedy output
(:func:`teacher_labels`, self-distillation): unlabeled articles are enough.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from itertools import cycle

import torch

from . import ops
from .layer import SRformerCrossAttention
from .parallel import parallel_attention
from .calibration import observing, srformer_layers

# Relative learning rate: each of W, λ, θ moves by about this share of its own size (RMS at the start) per
# Adam step. W is calibrated to a scale that differs by orders of magnitude between layers and models, so
# one absolute rate fits none of them.
DEFAULT_TRANSFER_LR = 1e-2
# Teacher passes kept for later steps (t5-small, batch 8 x 1024 tokens: ~220 MB each): at most this much, and at
# most a quarter of the memory the system has available (cache_budget)
DEFAULT_CACHE_BYTES = 4 << 30


def cache_budget(ceiling: int = DEFAULT_CACHE_BYTES) -> int:
    """``ceiling``, or a quarter of the memory available now if that is less (Linux; elsewhere the ceiling)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return ceiling
    return min(ceiling, available // 4)
EPS = 1e-12


def memory_parameters(model) -> list[torch.nn.Parameter]:
    """W, λ and θ of every layer: what attention transfer trains."""
    return [p for layer in srformer_layers(model) for name, p in layer.named_parameters()
            if name.startswith(("recurrent_w", "raf_"))]


# --------------------------------------------------------------------------- the teacher inside the student
@dataclass
class LayerInputs:
    """What one layer saw in the teacher's pass, and the full output it must reproduce. None of it depends on
    W, λ, θ, so a batch seen once can be scored again from these alone (no encoder or decoder pass)."""

    layer: SRformerCrossAttention
    query: torch.Tensor  # (B, H, T, d), scaled
    keys: torch.Tensor  # (B, H, n, d)
    values: torch.Tensor
    key_valid: torch.Tensor | None  # (B, n)
    target: torch.Tensor  # (B, T, D): the full cross-attention output, after the output projection

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.query, self.keys, self.values, self.target))


def layer_error(inputs: LayerInputs, settings, with_grad: bool) -> torch.Tensor:
    """(B, T) relative squared error of the layer's own output under ``settings`` against the full output."""
    layer = inputs.layer
    with torch.set_grad_enabled(with_grad):
        pred = parallel_attention(inputs.query, inputs.keys, inputs.values, inputs.key_valid, settings, layer)
        pred = layer.output_proj(layer._merge(pred, inputs.query.dtype)).float()
        return (pred - inputs.target).pow(2).sum(-1) / (inputs.target.pow(2).sum(-1) + EPS)


class _Recorder:
    """Per layer, the relative squared error of each decoder position: (B, T) tensors, in decoder order; with
    ``keep``, also each layer's ``LayerInputs``."""

    def __init__(self, own: dict[SRformerCrossAttention, object], with_grad: bool, keep: bool = False):
        self.own = own  # each layer's real (SRformer) settings
        self.with_grad, self.keep = with_grad, keep
        self.errors: list[torch.Tensor] = []
        self.kept: list[LayerInputs] = []

    def __call__(self, layer: SRformerCrossAttention, query, keys, values, key_valid) -> None:
        valid = torch.ones_like(keys[:, 0, :, 0], dtype=torch.bool) if key_valid is None else key_valid
        with torch.no_grad():  # teacher forcing: one query row per example, as keys
            target = ops.softmax_attention(query, keys, values, valid[:, None, None, :])  # (B, H, T, d)
            target = layer.output_proj(layer._merge(target, query.dtype)).float()  # (B, T, D)
        inputs = LayerInputs(layer, query.detach(), keys.detach(), values.detach(), key_valid, target)
        if self.keep:
            self.kept.append(inputs)
        self.errors.append(layer_error(inputs, self.own[layer], self.with_grad))


@contextmanager
def teaching(model, with_grad: bool = True, keep: bool = False):
    """Run ``model`` as the original full-attention model while each SRformer layer records its own output's
    error against the full output; yields the recorder (``.errors``: one (B, T) tensor per layer call; with
    ``keep``, ``.kept``: each layer's inputs and target)."""
    layers = srformer_layers(model)
    recorder = _Recorder({layer: layer.settings for layer in layers}, with_grad, keep)
    with as_full_attention(model), observing(layers, recorder):
        yield recorder


@contextmanager
def as_full_attention(model):
    """The converted model with every cross-attention layer back to full attention: the original model."""
    layers = srformer_layers(model)
    own = {layer: layer.settings for layer in layers}
    for layer in layers:
        layer.settings = replace(layer.settings, attention="full")
    try:
        yield model
    finally:
        for layer in layers:
            layer.settings = own[layer]


# --------------------------------------------------------------------------- batches
def _get(batch, key):
    return batch.get(key) if isinstance(batch, Mapping) else getattr(batch, key, None)


@torch.no_grad()
def teacher_labels(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   max_new_tokens: int) -> torch.Tensor:
    """The original (full-attention) model's greedy output for each article as labels (B, m), -100 after EOS."""
    was_training = model.training
    model.eval()
    try:
        with as_full_attention(model):
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, num_beams=1,
                                 max_new_tokens=max_new_tokens, min_new_tokens=1)
    finally:
        model.train(was_training)
    labels = out[:, 1:].clone()  # drop the decoder start token
    eos = model.config.eos_token_id
    finished = torch.zeros_like(labels, dtype=torch.bool)
    if eos is not None:
        finished[:, 1:] = (labels[:, :-1] == eos).cumsum(1) > 0
    pad = model.config.pad_token_id
    return labels.masked_fill(finished | ((labels == pad) & (pad != eos)), -100)


def model_inputs(model, batch, max_new_tokens: int) -> tuple[dict, torch.Tensor]:
    """(inputs for a teacher-forced forward, (B, T) bool mask of the decoder positions that count) for one batch
    (a mapping or object): input_ids and attention_mask, then decoder_input_ids (every position counts unless
    a decoder_attention_mask says otherwise), else labels (-100: not counted), else nothing: the full model's
    greedy output."""
    device = next(model.parameters()).device
    input_ids = _get(batch, "input_ids").to(device)
    mask = _get(batch, "attention_mask")
    mask = None if mask is None else mask.to(device)
    decoder_ids = _get(batch, "decoder_input_ids")
    if decoder_ids is not None:
        decoder_ids = decoder_ids.to(device)
        decoder_mask = _get(batch, "decoder_attention_mask")
        scored = torch.ones_like(decoder_ids, dtype=torch.bool) if decoder_mask is None else decoder_mask.to(device) > 0
    else:
        labels = _get(batch, "labels")
        labels = teacher_labels(model, input_ids, mask, max_new_tokens) if labels is None else labels.to(device)
        scored = labels != -100
        decoder_ids = model.prepare_decoder_input_ids_from_labels(
            labels=labels.masked_fill(~scored, model.config.pad_token_id))
    inputs = {"input_ids": input_ids, "decoder_input_ids": decoder_ids}
    if mask is not None:
        inputs["attention_mask"] = mask
    return inputs, scored


@dataclass
class _Prepared:
    inputs: dict
    scored: torch.Tensor  # (B, T) bool
    layers: list[LayerInputs] | None = None  # kept after the first teacher pass, while the budget allows


class _Cache:
    """The teacher passes' LayerInputs kept within ``budget`` bytes: a batch seen again costs only the SRformer
    branch of each layer, not the encoder and decoder passes."""

    def __init__(self, budget: int):
        self.left = budget

    def layer_errors(self, model, item: _Prepared, with_grad: bool) -> list[torch.Tensor]:
        """Per layer, the mean relative squared error over the scored positions of one batch."""
        if item.layers is not None:
            errors = [layer_error(inputs, inputs.layer.settings, with_grad) for inputs in item.layers]
        else:
            with teaching(model, with_grad, keep=self.left > 0) as recorder, warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # schedule warnings belong to the user's real run
                with torch.no_grad():  # everything but the recorder's SRformer branch
                    model(**item.inputs, use_cache=False)
            errors, size = recorder.errors, sum(inputs.nbytes for inputs in recorder.kept)
            if recorder.kept and size <= self.left:
                item.layers, self.left = recorder.kept, self.left - size
        weight = item.scored.float()
        return [(error * weight).sum() / weight.sum().clamp_min(1) for error in errors]


def _prepare(model, batches: Iterable, max_new_tokens: int) -> list[_Prepared]:
    """Every batch's model inputs and the positions that count."""
    return [_Prepared(*model_inputs(model, batch, max_new_tokens)) for batch in batches]


# --------------------------------------------------------------------------- the loop
@dataclass
class TransferResult:
    """What a transfer did: per-layer relative error ||pred - full|| / ||full|| (root of the mean relative
    squared error over the held-out or first batches) before and after, and the loss curve."""

    steps: int
    learning_rate: float
    layer_error_before: list[float]
    layer_error_after: list[float]
    examples: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    decoder_inputs: str = "labels"  # "labels", "greedy output of the full model" or "mixed"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What a run records of it: everything but the loss curve, whose first and last values stand in."""
        return {**{k: v for k, v in self.to_dict().items() if k != "losses"},
                "first_loss": self.losses[0], "final_loss": self.losses[-1]}


@torch.no_grad()
def layer_errors(model, prepared: Sequence[_Prepared], cache: _Cache | None = None) -> list[float]:
    """Per layer, root of the mean relative squared error over ``prepared`` batches."""
    cache = cache or _Cache(0)
    totals = None
    for item in prepared:
        errors = [e.item() for e in cache.layer_errors(model, item, with_grad=False)]
        totals = errors if totals is None else [a + b for a, b in zip(totals, errors)]
    return [math.sqrt(t / max(len(prepared), 1)) for t in totals or []]


def relative_groups(params, learning_rate: float) -> list[dict]:
    """One Adam group per parameter, its rate ``learning_rate`` times the parameter's RMS (never 0)."""
    groups = []
    for p in params:
        size = p.detach().float().pow(2).mean().sqrt().item()
        groups.append({"params": [p], "lr": learning_rate * (size if size > 0 else 1.0)})
    return groups


def transfer_attention(model, batches: Iterable, steps: int, learning_rate: float = DEFAULT_TRANSFER_LR,
                       eval_batches: Iterable | None = None, max_new_tokens: int = 128,
                       cache_bytes: int | None = None,
                       advance: Callable[..., None] | None = None) -> TransferResult:
    """Train W, λ and θ of every SRformer layer for ``steps`` steps at ``learning_rate`` relative to each one's size
    (DEFAULT_TRANSFER_LR) with a cosine decay (cycling over ``batches``) so that each layer's
    output matches the full cross-attention output of the original model (module docstring). The model is
    changed in place; every other weight is left as it was. ``eval_batches`` (default: the first two training
    batches) measure the per-layer error before and after. Each batch's teacher pass is kept (``LayerInputs``)
    while ``cache_bytes`` (default ``cache_budget()``) allow, so later steps on it skip the encoder and decoder. ``advance(1, loss=...)`` is
    called after each step.
    """
    params = memory_parameters(model)
    if not params:
        raise ValueError("attention transfer needs a variant with a recurrent memory (srformer or an ablation)")
    if steps < 1:
        raise ValueError(f"transfer steps must be at least 1, got {steps}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout: the targets are the original model's exact outputs
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        batches = list(batches)
        labelled = [_get(b, "labels") is not None or _get(b, "decoder_input_ids") is not None for b in batches]
        cache = _Cache(cache_budget() if cache_bytes is None else cache_bytes)
        train = _prepare(model, batches, max_new_tokens)
        held_out = train[:2] if eval_batches is None else _prepare(model, eval_batches, max_new_tokens)
        before = layer_errors(model, held_out, cache)
        optimizer = torch.optim.Adam(relative_groups(params, learning_rate))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
        losses = []
        for _, item in zip(range(steps), cycle(train)):
            loss = torch.stack(cache.layer_errors(model, item, with_grad=True)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():  # θ must stay positive (it divides U)
                for layer in srformer_layers(model):
                    if hasattr(layer, "raf_threshold"):
                        layer.raf_threshold.clamp_(min=1e-4)
            losses.append(loss.item())
            if advance is not None:
                advance(1, loss=loss.item())
        after = layer_errors(model, held_out, cache)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    source = "labels" if all(labelled) else "greedy output of the full model" if not any(labelled) else "mixed"
    return TransferResult(steps=steps, learning_rate=learning_rate, layer_error_before=before,
                          layer_error_after=after, examples=sum(b.scored.shape[0] for b in train),
                          seconds=time.perf_counter() - start, losses=losses, decoder_inputs=source)
