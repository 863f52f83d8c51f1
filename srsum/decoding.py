"""srsum's own decoder: greedy, sampling and beam search (also beam sampling) over SRformer models with
shared, fixed-size state.

Why not ``model.generate``: Hugging Face expands the encoder output and the cross-attention cache to
one copy per beam. Here every cross-attention layer holds one ``DecodeState`` per *example* (keys and
values for the local segments, P, ν, the RAF membrane and R: SPEC section 8), shared by the example's
beams, and built once before the first step. A step then reads one segment and one d x d matrix per
head and layer, whatever n is. The search itself follows ``generate``'s rules (logits processors,
beam bookkeeping, length penalty, early stopping) so the tokens are the same.

Sampling (``do_sample``) follows ``generate`` too: the processed scores are warped by temperature, then
top-k, then top-p, and the next token is drawn from their softmax (with beams: the next candidates are
drawn, without replacement, from the softmax of the beams' running scores instead of taken top-k). The
draws come from a ``torch.Generator`` of their own on the decoder's device, seeded from ``seed``: a fixed
seed gives the same tokens again, and the global RNG is neither read nor moved.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch._dynamo.exc
from transformers import DynamicCache, EncoderDecoderCache, StaticCache

from .engine.layer import SRformerCrossAttention
from .engine.state import decoding_states, held_tensors, prepare_states
from .errors import SrsumError, UsageError
from .step_linears import fast_step_linears

NEG_INF = float("-inf")
DEAD = -1.0e9  # the score HF gives to beams that must not be chosen
STEP_MODES = ("auto", "eager", "graph", "compiled")
# what torch.compile raises when it cannot compile the step (the last one is newer than torch 2.4)
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,
                  getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", torch._dynamo.exc.TorchDynamoException))


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. Lengths count generated tokens (the decoder start token is not counted)."""

    num_beams: int = 1
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | str | None = None  # True, False or "never" as in generate; None: the model's
    step: str = "auto"  # how a decoder step runs: "eager", "graph" (a captured CUDA graph), "compiled"
    #                     (torch.compile), "auto" (graph on CUDA, eager elsewhere)
    do_sample: bool = False  # draw the next token (with beams: the next candidates) instead of the best
    temperature: float = 1.0  # sampling only: scores / temperature (< 1 sharper, > 1 flatter)
    top_k: int = 50  # sampling only: keep the k best tokens per row (0: off); generate's default
    top_p: float = 1.0  # sampling only: keep the fewest best tokens holding this much probability (1: off)
    seed: int | None = None  # sampling only: the draws' generator seed (None: a random one)
    repetition_penalty: float = 1.0  # scores of tokens already in the row: / penalty (> 0), * penalty (< 0)
    num_return_sequences: int = 1  # per example: the best finished beams, or (sampling) independent draws
    max_time: float | None = None  # seconds from the search's start after which the step under way is the
    #                                last one (generate's max_time: greedy stops, beams finish as they are)

    def validate(self) -> "GenerationSettings":
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise UsageError(f"num_beams: must be an integer >= 1, got {self.num_beams!r}")
        if self.max_new_tokens < 1:
            raise UsageError(f"max_length: must be >= 1, got {self.max_new_tokens}")
        if self.min_new_tokens < 0:
            raise UsageError(f"min_length: must be >= 0, got {self.min_new_tokens}")
        if self.max_new_tokens < self.min_new_tokens:
            raise UsageError(f"max_length ({self.max_new_tokens}) is below min_length ({self.min_new_tokens})")
        if self.no_repeat_ngram_size < 0:
            raise UsageError(f"no_repeat_ngram_size: must be >= 0, got {self.no_repeat_ngram_size}")
        if self.step not in STEP_MODES:
            raise UsageError(f"step: must be one of {', '.join(STEP_MODES)}, got {self.step!r}")
        check_sampling(self.do_sample, self.temperature, self.top_k, self.top_p, self.seed)
        if isinstance(self.repetition_penalty, bool) or not isinstance(self.repetition_penalty, (int, float)) \
                or not self.repetition_penalty > 0:
            raise UsageError(f"repetition_penalty: must be a number > 0, got {self.repetition_penalty!r}")
        self._check_return_sequences()
        if self.max_time is not None and (isinstance(self.max_time, bool) or not self.max_time > 0):
            raise UsageError(f"max_time: must be a number of seconds > 0, got {self.max_time!r}")
        return self

    def _check_return_sequences(self) -> None:
        count = self.num_return_sequences
        if not isinstance(count, int) or count < 1:
            raise UsageError(f"num_return_sequences: must be an integer >= 1, got {count!r}")
        if self.num_beams > 1 and count > self.num_beams:
            raise UsageError(f"num_return_sequences ({count}) is above num_beams ({self.num_beams})")
        if self.num_beams == 1 and not self.do_sample and count > 1:
            raise UsageError(f"num_return_sequences ({count}) needs beams or sampling: greedy has one answer")

    @property
    def rows_per_example(self) -> int:
        """Query rows the decoder runs per example: the beams, or the independent draws."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences


SEED_LIMIT = 2 ** 64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


def check_sampling(do_sample, temperature, top_k, top_p, seed, names: dict[str, str] | None = None) -> None:
    """The sampling values' one-line errors (``names`` maps a field to how the caller spells it)."""
    name = (lambda field: (names or {}).get(field, field))
    if not isinstance(do_sample, bool):
        raise UsageError(f"{name('do_sample')}: must be True or False, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise UsageError(f"{name('temperature')}: must be a number > 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise UsageError(f"{name('top_k')}: must be an integer >= 0 (0: off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise UsageError(f"{name('top_p')}: must be in (0, 1] (1: off), got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise UsageError(f"{name('seed')}: must be an integer from 0 to 2**64 - 1, got {seed!r}")


@dataclass(frozen=True)
class SpecialTokens:
    start: int
    eos: tuple[int, ...]
    pad: int
    forced_bos: int | None
    forced_eos: int | tuple[int, ...] | None

    @classmethod
    def of(cls, model, generation_config=None) -> "SpecialTokens":
        """The model's tokens, or those of ``generation_config`` (a merged one, as generate uses) where set.
        The start token falls back to the BOS token, the padding to the first EOS token, as generate's do."""
        gen, config = generation_config or model.generation_config, model.config
        eos = gen.eos_token_id if gen.eos_token_id is not None else config.eos_token_id
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        pad = gen.pad_token_id if gen.pad_token_id is not None else config.pad_token_id
        start = _first_set(gen.decoder_start_token_id, config.decoder_start_token_id, gen.bos_token_id)
        forced_eos = getattr(gen, "forced_eos_token_id", None)
        forced_eos = tuple(forced_eos) if isinstance(forced_eos, (list, tuple)) else forced_eos
        return cls(int(start), eos, int(pad if pad is not None else (eos[0] if eos else 0)),
                   getattr(gen, "forced_bos_token_id", None), forced_eos)


def _first_set(*values):
    return next((value for value in values if value is not None), None)


# --------------------------------------------------------------------------- one decoder step
def compile_options(device: torch.device) -> dict:
    """How ``torch.compile`` builds the step: one static-shape graph, replayed as a CUDA graph on CUDA."""
    options = {"fullgraph": True, "dynamic": False}
    if device.type == "cuda":
        options["mode"] = "reduce-overhead"  # CUDA graphs
    return options


def capture_step(forward, tokens: torch.Tensor):
    """Capture ``forward(tokens)`` in a CUDA graph; returns ``replay() -> logits`` (the graph's own
    output tensor, overwritten by the next replay). ``tokens`` is the graph's fixed input buffer."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = forward(tokens)

    def replay() -> torch.Tensor:
        graph.replay()
        return logits

    return replay


GRAPH_CHECK_TOLERANCE = 1e-2  # |graph - eager| logits allowed at the one-time check (bf16 rounding)


class SharedStateDecoder:
    """Runs the decoder one token at a time over ``rows_per_example`` query rows per example.

    Everything a step touches is allocated before the first step and then updated in place: the
    decoder's self-attention cache is a ``StaticCache`` of ``max_steps`` positions, and each SRformer
    layer's ``DecodeState`` holds its segment schedule, laid out at the start
    (``DecodeState.use_schedule``: each group's local context; R is run ahead a window of positions at a
    time by ``DecodeState.prepare``, between steps, into a small ring), read at a step through one device
    tensor, ``clock`` (the position), with tensor indexing: no host work or host sync on the SRformer side
    of a step, and no branch on whether σ changed. The step itself is then the same kernels on the same
    tensors every time:
    ``graph`` captures it once in a CUDA graph and replays it, ``compiled`` hands it to ``torch.compile``
    as one static graph.

    ``graph``: steps 0 and 1 run eagerly (step 0 allocates the static cache, step 1, on a side stream,
    warms up the kernels), step 2 is captured and replayed, then checked once against the same step run
    eagerly (the self-attention cache is rolled back one position for that); a capture that fails or
    disagrees is reported and the decoding goes on eagerly.
    """

    def __init__(self, model, input_ids, attention_mask, rows_per_example: int, encoder_states=None,
                 max_steps: int = 128, step: str = "auto"):
        self.model = model
        if encoder_states is None:
            encoder = model.get_encoder()
            encoder_states = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        self.encoder_states = encoder_states  # (B, n, D), one copy per example
        self.max_steps = max_steps
        self.cache = EncoderDecoderCache(StaticCache(config=model.config, max_cache_len=max_steps),
                                         DynamicCache(config=model.config))
        key_valid = None if attention_mask is None else attention_mask.bool()
        # the position t as a device tensor: the only thing that changes between steps on the SRformer side
        self.clock = torch.zeros((), dtype=torch.long, device=encoder_states.device)
        states = decoding_states(self.cache)
        self.mode = resolve_step(step, self.encoder_states.device)
        self.layers = []  # (layer, its DecodeState)
        for layer in model.modules():
            if isinstance(layer, SRformerCrossAttention):
                state = layer.start_decoding(self.encoder_states, key_valid, rows_per_example, shared=states)
                state.use_schedule(layer, self.clock, fixed=self.mode == "compiled")
                states[layer.layer_idx] = state
                self.layers.append((layer, state))
        # Once decoding started the layers read their states, never the encoder output: a one-row copy
        # keeps the step's input shapes and strides the same at every n (a plain clone would keep the
        # slice's n-long batch stride at batch 1, where the slice counts as dense, and compile again per n)
        self.step_encoder_states = self.encoder_states[:, :1].clone(memory_format=torch.contiguous_format)
        self.position = 0  # the decoder position the next step computes
        rows = self.encoder_states.shape[0] * rows_per_example
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=self.encoder_states.device)  # fixed input
        self._replay = None  # the captured graph's replay, once captured
        if self.mode == "compiled":
            for _, state in self.layers:
                for tensor in state.step_inputs():
                    torch._dynamo.mark_static_address(tensor)
            self._compiled = torch.compile(self._forward, **compile_options(self.encoder_states.device))

    def _forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=(self.step_encoder_states,), decoder_input_ids=tokens, cache=self.cache,
                         use_cache=True, return_dict=True)
        return out.logits[:, -1, :].float()

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (rows, 1) -> next-token logits (rows, V) in float32."""
        if self.position >= self.max_steps:
            raise SrsumError(f"decoder: all {self.max_steps} preallocated positions are used")
        self.clock.fill_(self.position)  # a device write, no sync: the step reads σ(t), R, ... from it
        prepare_states(self.layers, self.position)  # every window of positions: the RAF runs ahead (outside the step)
        logits = None
        if self.mode == "compiled" and self.position > 0:  # step 0 runs eagerly: it allocates the static cache
            logits = self._compiled_logits(tokens)
        elif self.mode == "graph" and self.position > 0:
            logits = self._graph_logits(tokens)
        if logits is None:
            logits = self._forward(tokens)
        self.position += 1
        return logits

    def _eager_instead(self, what: str, reason: str) -> None:
        warnings.warn(f"decoder: {what} ({reason}); decoding eagerly", RuntimeWarning, stacklevel=4)
        self.mode = "eager"

    def _compiled_logits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The step through torch.compile; None (and eager from then on) if it cannot be compiled."""
        self.tokens.copy_(tokens)
        if tokens.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            return self._compiled(self.tokens).clone()  # a CUDA graph overwrites its output at the next replay
        except COMPILE_ERRORS as error:  # raised while compiling, before the step ran: eager is still right
            self._eager_instead("the compiled step is not available", _first_line(error))
            return None

    def _graph_logits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The step as a captured CUDA graph; None where this step is to run eagerly."""
        self.tokens.copy_(tokens)
        if self._replay is not None:
            return self._replay().clone()
        if self.position == 1:  # warm up on a side stream, as capturing requires
            return self._on_side_stream(lambda: self._forward(self.tokens))
        try:
            replay = self._on_side_stream(lambda: capture_step(self._forward, self.tokens))
        except RuntimeError as error:  # capturing runs nothing: the step is still to do
            self._eager_instead("the step cannot be captured in a CUDA graph", _first_line(error))
            return None
        captured = replay().clone()
        for layer in self.cache.self_attention_cache.layers:  # roll back one position, run the step eagerly
            layer.crop(-1)
        eager = self._forward(self.tokens)
        gap = float((captured - eager).abs().max())
        if not gap <= GRAPH_CHECK_TOLERANCE * max(1.0, float(eager.abs().max())):
            self._eager_instead("the CUDA graph step disagrees with the eager one", f"max gap {gap:.3g}")
        else:
            self._replay = replay
        return eager

    def _on_side_stream(self, work):
        if not self.tokens.is_cuda:
            return work()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = work()
        torch.cuda.current_stream().wait_stream(side)
        return out

    def reorder(self, row_index: torch.Tensor) -> None:
        """Beams moved: reorder the filled part of the self-attention cache in place (SRformer states
        are per example, so they stay)."""
        for layer in self.cache.self_attention_cache.layers:
            if layer.is_initialized:
                for tensor in (layer.keys, layer.values):
                    filled = tensor[:, :, :self.position]
                    filled.copy_(filled.index_select(0, row_index))

    def state_bytes(self) -> int:
        """Bytes of every tensor the decoding holds between steps: the self-attention cache and the
        SRformer states (with the encoder rows they read), each storage once."""
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held_tensors(self.cache)}
        return sum(storages.values())


def resolve_step(step: str, device: torch.device) -> str:
    """``auto``: a CUDA graph on CUDA (captured per decoding, about one step's cost), eager elsewhere.
    ``graph`` needs CUDA; ``compiled`` works anywhere (on CUDA it also replays CUDA graphs)."""
    if step not in STEP_MODES:
        raise UsageError(f"step: must be one of {', '.join(STEP_MODES)}, got {step!r}")
    if step == "auto":
        return "graph" if device.type == "cuda" else "eager"
    if step == "graph" and device.type != "cuda":
        raise UsageError(f"step: 'graph' captures CUDA graphs and needs a CUDA device, not {device.type}; "
                         f"use eager or compiled")
    return step


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------- logits processors
def process_scores(scores: torch.Tensor, sequences: torch.Tensor, settings: GenerationSettings,
                   special: SpecialTokens) -> torch.Tensor:
    """Ban/force tokens like generate's processors. scores (rows, V); sequences (rows, length) with start."""
    length = sequences.shape[1]
    generated = length - 1
    if settings.repetition_penalty != 1.0:
        scores = penalize_repeats(scores, sequences, settings.repetition_penalty)
    if settings.no_repeat_ngram_size and length + 1 >= settings.no_repeat_ngram_size:
        scores = ban_repeated_ngrams(scores, sequences, settings.no_repeat_ngram_size)
    if generated < settings.min_new_tokens and special.eos:
        scores[:, list(special.eos)] = NEG_INF
    if special.forced_bos is not None and length == 1:
        scores = _force(scores, special.forced_bos)
    if special.forced_eos is not None and length == settings.max_new_tokens:  # the last step
        scores = _force(scores, special.forced_eos)
    return scores


def _force(scores: torch.Tensor, token: int | tuple[int, ...]) -> torch.Tensor:
    forced = torch.full_like(scores, NEG_INF)
    forced[:, list(token) if isinstance(token, tuple) else token] = 0
    return forced


def penalize_repeats(scores: torch.Tensor, sequences: torch.Tensor, penalty: float) -> torch.Tensor:
    """Every token already in the row (the start token too): its score / penalty if positive, else * penalty."""
    seen = scores.gather(1, sequences)
    return scores.scatter(1, sequences, torch.where(seen < 0, seen * penalty, seen / penalty))


def ban_repeated_ngrams(scores: torch.Tensor, sequences: torch.Tensor, size: int) -> torch.Tensor:
    """Forbid any token that would repeat an n-gram already in the row (n = size)."""
    rows = sequences.tolist()
    for row, tokens in enumerate(rows):
        prefix = tuple(tokens[len(tokens) - size + 1:]) if size > 1 else ()
        banned = {tokens[i + size - 1] for i in range(len(tokens) - size + 1)
                  if tuple(tokens[i:i + size - 1]) == prefix}
        if banned:
            scores[row, list(banned)] = NEG_INF
    return scores


# --------------------------------------------------------------------------- sampling
def warp_scores(scores: torch.Tensor, settings: GenerationSettings, min_keep: int = 1) -> torch.Tensor:
    """Sampling's warpers on processed scores (rows, V), in generate's order: temperature, then top-k, then
    top-p. A filtered token's score becomes -inf; at least ``min_keep`` tokens per row stay."""
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    vocab = scores.shape[-1]
    if settings.top_k:
        k = min(max(settings.top_k, min_keep), vocab)
        kth_best = torch.topk(scores, k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, NEG_INF)  # ties with the k-th best stay
    if settings.top_p < 1.0:  # ranked worst first, as generate ranks them (the same rounding and ties)
        ranked, order = torch.sort(scores, dim=-1)
        mass_up_to = torch.softmax(ranked, dim=-1).cumsum(dim=-1)  # this token and every worse one
        drop = mass_up_to <= 1 - settings.top_p  # the better tokens hold top_p without this one
        drop[:, -min_keep:] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), NEG_INF)
    return scores


def sampling_generator(device: torch.device, seed: int | None = None) -> torch.Generator:
    """The draws' own generator on ``device``: seeded with ``seed``, else with a random seed (the global
    RNG is not touched either way)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _min_keep(special: SpecialTokens, beams: int) -> int:
    """Tokens the warpers keep per row: generate keeps one more than the EOS tokens with beams (a beam can
    then always continue), one without."""
    return (len(special.eos) + 1 if special.eos else 2) if beams > 1 else 1


# --------------------------------------------------------------------------- search
@dataclass
class SearchOutput:
    """What a search returns: the sequences (rows, L), decoder start token first; with ``record``, per step the
    processed scores (as generate's ``scores``) and the raw logits, each (rows searched, V); with beams also
    each returned sequence's score and beam indices (generate's ``sequences_scores`` and ``beam_indices``)."""

    sequences: torch.Tensor
    scores: list[torch.Tensor] | None = None
    logits: list[torch.Tensor] | None = None
    sequences_scores: torch.Tensor | None = None
    beam_indices: torch.Tensor | None = None

    def step(self, logits: torch.Tensor, scores: torch.Tensor) -> None:
        """Keep one step's raw logits and processed scores (when recording)."""
        if self.scores is not None:
            self.logits.append(logits)
            self.scores.append(scores)


def _new_output(record: bool) -> SearchOutput:
    empty = torch.empty(0, dtype=torch.long)
    return SearchOutput(empty, [], []) if record else SearchOutput(empty)


@torch.no_grad()
def generate(model, input_ids, attention_mask=None, *, num_beams: int = 1, max_new_tokens: int = 128,
             min_new_tokens: int = 0, length_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             early_stopping: bool | None = None, step: str = "auto", do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 50, top_p: float = 1.0, seed: int | None = None,
             repetition_penalty: float = 1.0, num_return_sequences: int = 1, max_time: float | None = None,
             generator: torch.Generator | None = None,
             encoder_states: torch.Tensor | None = None, streamer=None, **unsupported) -> torch.Tensor:
    """Summaries for a padded batch: (B, n) input ids -> (B, L) output ids, decoder start token first
    (``num_return_sequences`` > 1: B * that many rows, each example's together).

    Greedy when num_beams == 1, beam search otherwise, and with ``do_sample`` sampling / beam sampling
    (``temperature``, ``top_k``, ``top_p``, ``seed``: see ``GenerationSettings``; ``generator``, a
    ``torch.Generator`` on the model's device, is drawn from instead of a new one seeded from ``seed``, so
    a caller's batches can continue one stream). SRformer models decode with shared state, other models
    fall back to ``model.generate`` (its draws then come from the global RNG, forked and seeded for the
    call and restored after it). ``encoder_states`` (B, n, D), if given, is used instead of running the
    encoder (``input_ids`` may then be None). ``step``: see ``GenerationSettings``. ``streamer`` (greedy and
    sampling): a Hugging Face streamer, given the start tokens, then each step's tokens, then ``end()``.
    """
    if unsupported:
        raise SrsumError(f"generate: unsupported option(s) {sorted(unsupported)}")
    batch = (encoder_states if encoder_states is not None else input_ids).shape[0]
    if batch == 0:
        raise SrsumError("batch: no articles to summarize")
    if early_stopping is None:
        early_stopping = bool(model.generation_config.early_stopping)
    settings = GenerationSettings(num_beams=num_beams, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                  length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                  early_stopping=early_stopping, step=step, do_sample=do_sample,
                                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                  repetition_penalty=repetition_penalty,
                                  num_return_sequences=num_return_sequences, max_time=max_time).validate()
    device = (encoder_states if encoder_states is not None else next(model.parameters())).device
    if settings.do_sample and generator is not None and generator.device.type != device.type:
        raise SrsumError(f"generate: the generator is on {generator.device}, the model on {device}")
    if not has_srformer_layers(model):
        if encoder_states is not None or streamer is not None:
            raise SrsumError("generate: encoder_states and streamer need an SRformer model (srsum.engine.convert)")
        return _hf_generate(model, input_ids, attention_mask, settings, generator)
    if settings.do_sample and generator is None:
        generator = sampling_generator(device, settings.seed)
    return search(model, input_ids, attention_mask, settings, SpecialTokens.of(model), generator=generator,
                  encoder_states=encoder_states, streamer=streamer).sequences


def has_srformer_layers(model) -> bool:
    return any(isinstance(m, SRformerCrossAttention) for m in model.modules())


def search(model, input_ids, attention_mask, settings: GenerationSettings, special: SpecialTokens, *,
           generator: torch.Generator | None = None, encoder_states: torch.Tensor | None = None, streamer=None,
           record: bool = False) -> SearchOutput:
    """Build the shared-state decoder for ``settings`` and run its search (greedy/sampling or beams).
    With ``do_sample`` the draws come from ``generator``, or from torch's global RNG when it is None (as
    generate draws). ``record``: keep each step's scores and logits (``SearchOutput``)."""
    if streamer is not None and settings.num_beams > 1:
        raise SrsumError("streamer: beam search cannot stream its tokens (generate neither); use num_beams=1")
    deadline = None if settings.max_time is None else time.perf_counter() + settings.max_time
    rows = settings.rows_per_example
    decoder = SharedStateDecoder(model, input_ids, attention_mask, rows, encoder_states,
                                 max_steps=settings.max_new_tokens, step=settings.step)
    batch = decoder.encoder_states.shape[0]
    with fast_step_linears(model, batch * rows):  # state building above uses no step linear
        if settings.num_beams == 1:
            return greedy_search(decoder, batch * rows, settings, special, generator, streamer, record, deadline)
        return beam_search(decoder, batch, settings, special, generator, record, deadline)


def out_of_time(deadline: float | None) -> bool:
    """Has ``deadline`` (a ``time.perf_counter()`` value; None: none) passed?"""
    return deadline is not None and time.perf_counter() > deadline


def _hf_generate(model, input_ids, attention_mask, settings: GenerationSettings,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``model.generate`` for models that are not SRformer; a sampling call draws from the global RNG, so it
    runs in a fork of it, seeded from ``seed`` (or from ``generator``), and the global state is restored."""
    options = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=settings.num_beams,
                   max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                   length_penalty=settings.length_penalty, no_repeat_ngram_size=settings.no_repeat_ngram_size,
                   early_stopping=settings.early_stopping, do_sample=settings.do_sample,
                   repetition_penalty=settings.repetition_penalty,
                   num_return_sequences=settings.num_return_sequences)
    if not settings.do_sample:
        return model.generate(**options)
    device = input_ids.device
    if generator is not None:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
    else:
        seed = settings.seed if settings.seed is not None else torch.Generator().seed()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.generate(**options, temperature=settings.temperature, top_k=settings.top_k,
                              top_p=settings.top_p)


def _pick(scores: torch.Tensor, settings: GenerationSettings, generator: torch.Generator | None) -> torch.Tensor:
    """The next token per row: the best, or with ``do_sample`` one drawn from the (warped) scores."""
    if not settings.do_sample:
        return scores.argmax(-1)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator).squeeze(1)


def greedy_search(decoder: SharedStateDecoder, rows: int, settings: GenerationSettings, special: SpecialTokens,
                  generator: torch.Generator | None = None, streamer=None, record: bool = False,
                  deadline: float | None = None) -> SearchOutput:
    """One row per example (or ``num_return_sequences`` rows, sampling): the best next token, or with
    ``do_sample`` a drawn one (from ``generator``; None: the global RNG). ``streamer`` gets the start tokens,
    each step's tokens and ``end()``, as generate gives them. Past ``deadline`` no further step starts."""
    device = decoder.encoder_states.device
    sequences = torch.full((rows, 1), special.start, dtype=torch.long, device=device)
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    eos = torch.tensor(special.eos, device=device, dtype=torch.long)
    output = _new_output(record)
    _stream(streamer, sequences)
    for _ in range(settings.max_new_tokens):
        logits = decoder.logits(sequences[:, -1:])
        scores = process_scores(logits.clone() if record else logits, sequences, settings, special)
        if settings.do_sample:
            scores = warp_scores(scores, settings)
        output.step(logits, scores)
        tokens = torch.where(unfinished, _pick(scores, settings, generator), special.pad)
        sequences = torch.cat([sequences, tokens[:, None]], dim=1)
        _stream(streamer, tokens)
        if len(eos):
            unfinished &= ~torch.isin(tokens, eos)
        if not bool(unfinished.any()) or out_of_time(deadline):
            break
    if streamer is not None:
        streamer.end()
    output.sequences = sequences
    return output


def _stream(streamer, tokens: torch.Tensor) -> None:
    if streamer is not None:
        streamer.put(tokens.cpu())


def _gather_beams(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, beams, L), index (B, k) -> (B, k, L): each example's rows in ``index`` order."""
    return tensor.gather(1, index[:, :, None].expand(-1, -1, tensor.shape[2]))


def beam_search(decoder: SharedStateDecoder, batch: int, settings: GenerationSettings,
                special: SpecialTokens, generator: torch.Generator | None = None,
                record: bool = False, deadline: float | None = None) -> SearchOutput:
    """Beam search with generate's bookkeeping: keep the best ``beams`` open hypotheses and the best
    ``beams`` finished ones (scored by log-prob / length ** length_penalty) per example; the best
    ``num_return_sequences`` of these are returned, with their scores and beam indices.

    With ``do_sample`` (beam sampling, as generate does it): the warped log-probs are added to the running
    scores and the step's candidates are drawn without replacement from the softmax over all of an
    example's beams x vocabulary (from ``generator``; None: the global RNG), then ranked by score, instead
    of the top ones taken. The beams still share their example's one SRformer state: only the
    self-attention cache is reordered. Past ``deadline`` the step under way is the last: every candidate
    finishes, as at the maximum length (generate's max_time).
    """
    beams, device = settings.num_beams, decoder.encoder_states.device
    max_length = settings.max_new_tokens + 1
    keep = max(2, 1 + len(special.eos)) * beams  # candidates per step, enough to leave `beams` open
    fill = (special.pad or special.eos[0]) if special.eos else -1  # as generate pads beams
    running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, 0] = special.start
    origins = torch.full((batch, beams, max_length - 1), -1, dtype=torch.int32, device=device)  # beam indices
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = DEAD  # all beams start identical: only the first may expand
    finished, finished_origins = running.clone(), origins.clone()
    finished_scores = torch.full((batch, beams), DEAD, device=device)
    finished_done = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    eos = torch.tensor(special.eos, device=device, dtype=torch.long)
    example_offset = torch.arange(batch, device=device)[:, None] * beams
    top_beams = torch.arange(keep, device=device) < beams
    output = _new_output(record)
    length = 1
    while True:
        flat = running[:, :, :length].reshape(batch * beams, length)
        logits = decoder.logits(flat[:, -1:])
        log_probs = process_scores(torch.log_softmax(logits, dim=-1), flat, settings, special)
        if settings.do_sample:
            log_probs = warp_scores(log_probs, settings, _min_keep(special, beams))
        output.step(logits, log_probs)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(batch, beams, vocab) + running_scores[:, :, None]).view(batch, -1)
        if settings.do_sample:  # draw the candidates, then rank them as topk would have
            cand_index = torch.multinomial(torch.softmax(totals, dim=-1), keep, generator=generator)
            cand_scores, order = totals.gather(1, cand_index).sort(dim=-1, descending=True)
            cand_index = cand_index.gather(1, order)
        else:
            cand_scores, cand_index = torch.topk(totals, keep)  # (B, keep)
        cand_beam, cand_token = cand_index // vocab, cand_index % vocab
        candidates = _gather_beams(running, cand_beam).clone()
        candidates[:, :, length] = cand_token
        cand_origins = _gather_beams(origins, cand_beam).clone()
        cand_origins[:, :, length - 1] = (cand_beam + example_offset).to(cand_origins.dtype)
        hits = torch.isin(cand_token, eos) if len(eos) else torch.zeros_like(cand_token, dtype=torch.bool)
        if length + 1 >= max_length or out_of_time(deadline):
            hits = torch.ones_like(hits)
        # open beams for the next step: the best `beams` candidates that did not stop
        open_scores = cand_scores + hits.float() * DEAD
        next_index = torch.topk(open_scores, beams).indices
        running, origins = _gather_beams(candidates, next_index), _gather_beams(cand_origins, next_index)
        running_scores = open_scores.gather(1, next_index)
        source_beam = cand_beam.gather(1, next_index)
        # finished hypotheses: merge the ones that just stopped among the top `beams` candidates
        stopped = hits & top_beams[None, :]
        normalised = cand_scores / float(length) ** settings.length_penalty
        full = finished_done.all(-1, keepdim=True) & (settings.early_stopping is True)
        normalised = normalised + full.float() * DEAD + (~improvable).float() * DEAD + (~stopped).float() * DEAD
        merged_scores = torch.cat([finished_scores, normalised], dim=1)
        best = torch.topk(merged_scores, beams).indices
        finished = _gather_beams(torch.cat([finished, candidates], 1), best)
        finished_origins = _gather_beams(torch.cat([finished_origins, cand_origins], 1), best)
        finished_scores = merged_scores.gather(1, best)
        finished_done = torch.cat([finished_done, stopped], 1).gather(1, best)
        decoder.reorder((source_beam + example_offset).flatten())
        length += 1
        improvable = _still_improvable(improvable, running_scores, finished_scores, finished_done, length,
                                       max_length, settings)
        all_stopped = bool(hits.all())
        closed = bool(finished_done.all()) and settings.early_stopping is True
        if not bool(improvable.any()) or closed or all_stopped:
            break
    return _best_finished(output, finished, finished_scores, finished_origins, settings.num_return_sequences)


def _best_finished(output: SearchOutput, finished, finished_scores, finished_origins, count: int) -> SearchOutput:
    """The best ``count`` finished hypotheses per example, (B * count, L) cut to the longest one."""
    origins = finished_origins[:, :count].flatten(0, 1)
    generated = int((origins >= 0).sum(-1).max())
    output.sequences = finished[:, :count].flatten(0, 1)[:, :1 + generated]
    output.sequences_scores = finished_scores[:, :count].flatten()
    output.beam_indices = origins[:, :generated]
    return output


def _still_improvable(improvable, running_scores, finished_scores, finished_done, length, max_length,
                      settings: GenerationSettings) -> torch.Tensor:
    """Could an open beam still beat the worst finished one? (generate's early-stop heuristic)."""
    if settings.early_stopping == "never" and settings.length_penalty > 0:
        best_length = max_length - 1
    else:
        best_length = length - 1
    best_open = running_scores[:, :1] / float(best_length) ** settings.length_penalty
    worst_finished = torch.where(finished_done, finished_scores.min(dim=1, keepdim=True).values,
                                 torch.full_like(finished_scores, DEAD))
    return improvable & (best_open > worst_finished).any(-1, keepdim=True)
