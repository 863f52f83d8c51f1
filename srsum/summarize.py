"""Summaries: the library behind ``srsum summarize`` (and the generation half of ``srsum evaluate``).

The CLI only parses options and calls these functions; tests call them directly too.

* :func:`load_summarizer` loads a model (an srsum checkpoint, a plain T5/BART folder or Hub name, or
  the newest checkpoint under ``models/``) and its tokenizer.
* :func:`summarize_examples` generates summaries with :func:`srsum.decoding.generate`.

ROUGE evaluation (``srsum evaluate``) is in :mod:`srsum.evaluation`.

Progress, warnings and notes go through a :class:`Reporter`; the default one is silent except for
warnings, which it emits with ``warnings.warn`` as :class:`srsum.data.DataWarning`.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from srsum.checkpoints import (MODELS_DIR, atomic_write_text, ensure_writable_dir,
                               find_newest_model, read_trainer_state)
from srsum.data import Example
from srsum.errors import SrsumError, UsageError
from srsum.reporting import Reporter

NO_MODEL_HELP = (
    "no --model given and no trained checkpoint found under {root}/; train one with "
    "`srsum train --model t5-small --dataset cnn_dailymail`, or pass --model t5-small (or a local model "
    "folder) to summarize with a plain pretrained model"
)


# ---------------------------------------------------------------------------------------------
# reporting


# ---------------------------------------------------------------------------------------------
# settings


# What summarize/evaluate generate with when neither the command line nor the model says otherwise
# (the sampling values are generate's own defaults).
GENERATION_DEFAULTS = {"num_beams": 4, "max_length": 128, "min_length": 0, "length_penalty": 1.0,
                       "no_repeat_ngram_size": 3, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}
SAMPLING_OPTIONS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "seed": "--seed"}


@dataclass
class SummarizeSettings:
    """How a summarize/evaluate job generates: the decoder's settings (``decoder_settings``, checked
    again by srsum.decoding) plus batching and source truncation. Recorded in evaluate's metrics JSON.

    A generation field left at None takes the model's own default (:meth:`for_model`: the checkpoint's
    ``task_specific_params["summarization"]``, as t5-small ships them), else :data:`GENERATION_DEFAULTS`.
    """

    num_beams: int | None = None
    max_length: int | None = None  # new tokens at most
    min_length: int | None = None  # new tokens at least
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    batch_size: int | str = 8  # articles per batch, or "auto": as many as the memory left holds (srsum.batching)
    max_source_length: int | None = None  # None: what the model was trained with, else 1024
    step: str = "auto"  # decoder step: "eager", "graph" (CUDA graph), "compiled" (torch.compile), "auto"
    do_sample: bool | None = None  # sample (with beams: beam sampling) instead of the best tokens
    temperature: float | None = None  # sampling: scores / temperature
    top_k: int | None = None  # sampling: keep the k best tokens (0: off)
    top_p: float | None = None  # sampling: keep the fewest best tokens holding this probability (1: off)
    seed: int | None = None  # sampling: the draws' seed (None: a random one, drawn and recorded by with_seed)

    def validate(self) -> SummarizeSettings:
        from srsum.batching import parse_batch_size

        parse_batch_size(self.batch_size)
        checks = [("--num-beams", self.num_beams, 1), ("--max-length", self.max_length, 1),
                  ("--min-length", self.min_length, 0), ("--no-repeat-ngram-size", self.no_repeat_ngram_size, 0),
                  ("--max-source-length", self.max_source_length, 1)]
        for name, value, low in checks:
            if value is not None and value < low:
                raise UsageError(f"{name} must be at least {low}, got {value}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise UsageError(f"--min-length {self.min_length} is larger than --max-length {self.max_length}")
        from srsum.decoding import STEP_MODES

        if self.step not in STEP_MODES:
            raise UsageError(f"--step must be one of {', '.join(STEP_MODES)}, got {self.step!r}")
        self._check_sampling()
        return self

    def _check_sampling(self) -> None:
        from srsum.decoding import check_sampling

        given = {key: getattr(self, key) for key in ("do_sample", *SAMPLING_OPTIONS) if getattr(self, key) is not None}
        values = {**{key: GENERATION_DEFAULTS.get(key) for key in ("do_sample", *SAMPLING_OPTIONS)}, **given}
        check_sampling(**values, names={"do_sample": "--do-sample", **SAMPLING_OPTIONS})
        if self.do_sample is False:  # said so (--no-sample); with None the model's default decides (for_model)
            self._no_sampling_values()

    def _no_sampling_values(self) -> None:
        given = [flag for key, flag in SAMPLING_OPTIONS.items() if getattr(self, key) is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise UsageError(f"{', '.join(given)} only {verb} when sampling: add --do-sample")

    def for_model(self, model) -> SummarizeSettings:
        """These settings with every unset generation field filled: from the model's
        ``task_specific_params["summarization"]`` (Hugging Face's lengths count the decoder start token,
        so max_length/min_length there are one more than new tokens), else :data:`GENERATION_DEFAULTS`.
        Without sampling the sampling values stay None, and giving one is an error; the seed is filled by
        :meth:`with_seed`."""
        params = (getattr(model.config, "task_specific_params", None) or {}).get("summarization") or {}
        from_model = {key: params[key] for key in ("num_beams", "length_penalty", "no_repeat_ngram_size", "do_sample",
                                                   "temperature", "top_k", "top_p") if key in params}
        from_model.update({key: max(0, int(params[key]) - 1) for key in ("max_length", "min_length")
                           if key in params})
        filled = {key: value if value is not None else from_model.get(key, GENERATION_DEFAULTS[key])
                  for key, value in asdict(self).items() if key in GENERATION_DEFAULTS}
        if not filled["do_sample"]:  # the sampling values do not apply: they stay unset (None)
            filled.update({key: None for key in SAMPLING_OPTIONS if key in filled})
        resolved = replace(self, **filled)
        if resolved.min_length > resolved.max_length:  # a model's min above the user's --max-length
            resolved = replace(resolved, min_length=resolved.max_length if self.min_length is None else
                               resolved.min_length)
        if not resolved.do_sample:
            self._no_sampling_values()
        return resolved.validate()

    def with_seed(self) -> SummarizeSettings:
        """Sampling without a seed: these settings with a random seed drawn now (so it can be recorded and
        the run repeated); otherwise unchanged. Neither Python's nor torch's global RNG is used."""
        if self.do_sample and self.seed is None:
            import secrets

            return replace(self, seed=secrets.randbelow(2 ** 32))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def decoder_settings(self):
        """The srsum.decoding settings these map to (lengths are new tokens in both); unset fields take
        :data:`GENERATION_DEFAULTS` (call :meth:`for_model` first to use the model's)."""
        from srsum.decoding import GenerationSettings

        value = {key: GENERATION_DEFAULTS[key] if getattr(self, key) is None else getattr(self, key)
                 for key in GENERATION_DEFAULTS}
        return GenerationSettings(num_beams=value["num_beams"], max_new_tokens=value["max_length"],
                                  min_new_tokens=value["min_length"], length_penalty=value["length_penalty"],
                                  no_repeat_ngram_size=value["no_repeat_ngram_size"], step=self.step,
                                  do_sample=bool(value["do_sample"]), temperature=value["temperature"],
                                  top_k=value["top_k"], top_p=value["top_p"], seed=self.seed).validate()


def resolve_device(name: str | None):
    """``None``/``auto``: CUDA if available, else CPU; otherwise the named device, checked."""
    import torch

    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return device


def wants_int8(name: str | None) -> bool:
    """``--dtype int8``: float32 weights with the decode step's linear layers in int8 (srsum.quantization)."""
    return str(name).lower() == "int8"


# ---------------------------------------------------------------------------------------------
# models


@dataclass
class Summarizer:
    """A loaded model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    source: str
    trainer_state: dict[str, Any] = field(default_factory=dict)
    number_format: str = ""  # what the weights run in and why, e.g. "bfloat16 (auto: this CPU has AVX512-BF16)"

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def srformer_settings(self) -> dict[str, Any]:
        return {key: value for key, value in self.model.config.to_dict().items() if key.startswith("srformer_")}

    def default_max_source_length(self) -> int | None:
        return self.trainer_state.get("args", {}).get("max_source_length")


def _looks_like_local_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
            or Path(name).suffix.lower() in (".json", ".jsonl", ".txt", ".bin", ".safetensors"))


def check_model_source(name: str) -> None:
    """Fail fast for a local-looking model path that does not exist, and for a Hub name when the Hub
    cannot be reached and the model is not cached (instead of retrying for half a minute)."""
    from srsum.hub import require_hub

    if Path(name).expanduser().exists():
        return
    if _looks_like_local_path(name):
        raise SrsumError(f"model: {name} not found (neither a local model folder nor a Hugging Face model name)")
    require_hub(name)


def load_summarizer(model: str | None = None, device: str | None = None, dtype: str | None = None,
                    models_root: str | Path = MODELS_DIR, reporter: Reporter | None = None,
                    encoder_block: int | None | str = "default", threads: int | None = None) -> Summarizer:
    """Load a model and its tokenizer for generation (``model=None``: newest checkpoint under models/).
    ``encoder_block``: queries per block of the encoder's self-attention (0/None: Hugging Face's
    unblocked path; "default": the checkpoint's ``srformer_encoder_block``). ``dtype``: see
    ``srsum.precision`` (None: auto). ``threads``: CPU threads (``srsum.threads``; None: one per core)."""
    from srsum import precision
    from srsum.engine import load_model
    from srsum.threads import use_threads
    from srsum.tokenization import load_tokenizer

    reporter = reporter or Reporter()
    if encoder_block != "default":
        from srsum.engine.settings import encoder_block_size

        try:
            encoder_block_size(encoder_block)
        except SrsumError:
            raise UsageError(f"--encoder-block must be a positive number of queries, or 0 for off; got "
                             f"{encoder_block}") from None
    torch_device = resolve_device(device)
    use_threads(threads)
    torch_dtype = precision.resolve_dtype(dtype, torch_device)
    if wants_int8(dtype) and torch_device.type != "cpu":
        raise UsageError(f"--dtype int8 runs on CPU only (torch's dynamic quantisation), not on {torch_device}")
    if model is None:
        found = find_newest_model(models_root)
        if found is None:
            raise SrsumError(NO_MODEL_HELP.format(root=str(models_root).rstrip("/")))
        model = str(found)
        reporter.info(f"using the newest checkpoint: {model}")
    check_model_source(model)
    try:
        loaded = load_model(model, dtype=torch_dtype, device=torch_device, encoder_block=encoder_block)
    except SrsumError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SrsumError(f"model: cannot load {model!r} as an srsum checkpoint or a T5/BART model ({reason})") from None
    if wants_int8(dtype):
        from srsum.quantization import quantize_for_decoding

        quantize_for_decoding(loaded)
    tokenizer = load_tokenizer(model)
    state = read_trainer_state(model) if Path(model).is_dir() else {}
    return Summarizer(loaded, tokenizer, model, state, precision.why(dtype, torch_dtype, torch_device))


# ---------------------------------------------------------------------------------------------
# generation


TRUNCATION_WARNINGS = 3  # more truncated articles than this: one warning with the count instead


def summarize_examples(summarizer: Summarizer, examples: Sequence[Example], settings: SummarizeSettings,
                       reporter: Reporter | None = None, warn_each: bool = True,
                       on_summary: Callable[[int, str], None] | None = None, streamer=None) -> list[str]:
    """Summaries of ``examples`` in order; over-long articles are truncated with a warning naming both lengths.

    A few truncated articles are named one by one; more than :data:`TRUNCATION_WARNINGS` (or any number
    with ``warn_each=False``) give one warning with the count. ``on_summary(index, summary)`` is called as
    each summary is finished (batches run longest first), so a caller can write results as they come.
    ``streamer`` (one article, num_beams 1; e.g. :func:`text_streamer`) gets the tokens as they are decoded.
    Ends with a note of the tokens read and written per second.
    """
    from srsum.tokenization import clip_chars, encode_examples, resolve_max_source_length

    reporter = reporter or Reporter()
    model, tokenizer = summarizer.model, summarizer.tokenizer
    settings = settings.validate().for_model(model).with_seed()
    if streamer is not None:
        check_streaming(len(examples), settings.num_beams)
    if settings.do_sample:
        reporter.info(f"sampling with seed {settings.seed} (temperature {settings.temperature}, top-k "
                      f"{settings.top_k}, top-p {settings.top_p}); the same seed and --batch-size repeat it")
    max_source = resolve_max_source_length(
        model, settings.max_source_length or summarizer.default_max_source_length())
    if not examples:
        return []

    cut: list[tuple[int, int]] = []  # (index, full length) of every truncated article
    with reporter.progress("tokenizing", len(examples)) as advance:
        encoded = encode_examples(tokenizer, model.config, [e.text for e in examples], None, max_source,
                                  on_truncate=lambda index, length, limit: cut.append((index, length)),
                                  advance=advance)
    if cut and warn_each and len(cut) <= TRUNCATION_WARNINGS:
        for index, length in cut:
            about = "about " if len(examples[index].text) > clip_chars(max_source) else ""
            reporter.warn(f"article {examples[index].id!r} is {about}{length} tokens long, more than the max source "
                          f"length {max_source}: truncated to {max_source} tokens")
    elif cut:
        reporter.warn(f"{len(cut)} of {len(examples)} articles are longer than the max source length {max_source} "
                      f"tokens (longest {max(length for _, length in cut)}) and were truncated to {max_source} tokens")
    stats = GenerationStats(number_format=summarizer.number_format)
    summaries = generate_summaries(model, tokenizer, [row.input_ids for row in encoded], settings, reporter,
                                   on_summary=on_summary, stats=stats, streamer=streamer)
    reporter.info(stats.describe())
    return summaries


def summarize_shared(summarizer: Summarizer, examples: Sequence[Example], settings: SummarizeSettings,
                     reporter: Reporter | None = None, group=None,
                     on_summary: Callable[[int, str], None] | None = None) -> list[str]:
    """:func:`summarize_examples` under a launcher: this process summarizes its contiguous share of ``examples``
    (``on_summary(index into examples, summary)`` for each of its own) and every process gets all the summaries,
    in order. ``group``: accelerate's process state (``srsum.training.distributed.process_group``); None: one
    process does all."""
    if group is None or group.num_processes == 1:
        return summarize_examples(summarizer, examples, settings, reporter, on_summary=on_summary)
    from srsum.training.distributed import gather_shards, shard_bounds

    start, end = shard_bounds(len(examples), group.num_processes, group.process_index)
    own = (None if on_summary is None else (lambda index, summary: on_summary(start + index, summary)))
    mine = summarize_examples(summarizer, examples[start:end], settings, reporter, warn_each=False,
                              on_summary=own) if end > start else []
    return gather_shards(mine, group)


@dataclass
class GenerationStats:
    """What a generation job read and wrote, and how long its decoding took (encoder included)."""

    articles: int = 0
    source_tokens: int = 0
    summary_tokens: int = 0
    seconds: float = 0.0
    number_format: str = ""  # Summarizer.number_format, named in the note when known

    def describe(self) -> str:
        rate = (lambda tokens: f"{tokens / self.seconds:,.0f}") if self.seconds > 0 else (lambda tokens: "-")
        per_minute = f"{self.articles * 60 / self.seconds:,.1f}" if self.seconds > 0 else "-"
        text = (f"summarized {self.articles} article(s) in {self.seconds:.1f} s ({per_minute} articles/min): "
                f"{self.source_tokens:,} source tokens ({rate(self.source_tokens)}/s), {self.summary_tokens:,} "
                f"summary tokens ({rate(self.summary_tokens)}/s)")
        return f"{text}; weights in {self.number_format}" if self.number_format else text


def generate_summaries(model, tokenizer, sources: Sequence[Sequence[int]], settings: SummarizeSettings,
                       reporter: Reporter | None = None, description: str = "generating",
                       on_summary: Callable[[int, str], None] | None = None,
                       stats: GenerationStats | None = None, streamer=None) -> list[str]:
    """Decode summaries for tokenized sources, longest first in batches, returned in input order.

    ``on_summary(index, summary)`` is called for each finished summary; ``stats`` (if given) is filled in.
    With sampling every batch draws from one generator seeded from ``settings.seed`` (a random seed if
    None), so the same seed, batch size and sources give the same summaries.
    """
    from srsum.decoding import generate, resolve_step, sampling_generator
    from srsum.tokenization import pad_batch

    reporter = reporter or Reporter()
    stats = stats if stats is not None else GenerationStats()
    decoder_settings = settings.decoder_settings()
    device = next(model.parameters()).device
    resolve_step(decoder_settings.step, device)  # a step the device cannot run fails before any work
    generator = sampling_generator(device, decoder_settings.seed) if decoder_settings.do_sample else None
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    sizes = plan_batches(model, [len(sources[i]) for i in order], settings, decoder_settings, reporter)
    summaries: list[str] = [""] * len(sources)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        with reporter.progress(description, len(sources)) as advance:
            for start, size in zip(itertools.accumulate([0] + sizes), sizes):
                batch = order[start:start + size]
                ids, mask = pad_batch([sources[i] for i in batch], tokenizer.pad_token_id)
                output = generate(model, ids.to(device), mask.to(device), **asdict(decoder_settings),
                                  generator=generator, streamer=streamer)
                texts = tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                stats.articles += len(batch)
                stats.source_tokens += sum(len(sources[i]) for i in batch)
                stats.summary_tokens += _new_tokens(output, tokenizer)
                stats.seconds = time.perf_counter() - started
                for i, text in zip(batch, texts):
                    summaries[i] = text.strip()
                    if on_summary is not None:
                        on_summary(i, summaries[i])
                advance(len(batch), tokens_per_s=f"{stats.summary_tokens / max(stats.seconds, 1e-9):.0f}")
    finally:
        model.train(was_training)
    return summaries


def plan_batches(model, lengths: Sequence[int], settings: SummarizeSettings, decoder_settings,
                 reporter: Reporter) -> list[int]:
    """Batch sizes over sources sorted longest first: ``settings.batch_size`` each, or with "auto" as many as half
    the memory left holds (``srsum.batching``; the note says the range)."""
    from srsum.batching import AUTO, AUTO_SHARE, article_bytes, batch_sizes, memory_left, parse_batch_size

    size = parse_batch_size(settings.batch_size)
    if size != AUTO:
        return batch_sizes(lengths, size)
    parameter = next(model.parameters())
    block = getattr(model.config, "srformer_encoder_block", None)
    budget = int(AUTO_SHARE * memory_left(parameter.device))
    cost = (lambda n: article_bytes(model.config, n, decoder_settings.num_beams, decoder_settings.max_new_tokens,
                                    parameter.element_size(), block))
    sizes = batch_sizes(lengths, AUTO, cost, budget)
    if sizes:
        reporter.info(f"batch size auto: {max(sizes)} to {min(sizes)} articles per batch ({budget / 2**30:.1f} GiB, "
                      f"half the memory left)")
    return sizes


def check_streaming(articles: int, num_beams: int) -> None:
    """Streaming shows one summary as it is written: one article, and no beams (a beam's tokens are not final)."""
    if articles != 1:
        raise UsageError(f"--stream prints one summary as it is written; got {articles} articles")
    if num_beams != 1:
        raise UsageError(f"--stream needs --num-beams 1 (beam search settles its tokens at the end), got {num_beams}")


def text_streamer(tokenizer):
    """Hugging Face's TextStreamer: a summary's text on stdout as its tokens come (start token left out)."""
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def _new_tokens(output, tokenizer) -> int:
    """Tokens generated in a batch of output ids (decoder start and padding after the end left out)."""
    pad = tokenizer.pad_token_id
    return int((output[:, 1:] != pad).sum().item()) if pad is not None else int(output[:, 1:].numel())


def summarize_texts(texts: Sequence[str], model: str | None = None, settings: SummarizeSettings | None = None,
                    device: str | None = None, dtype: str | None = None,
                    reporter: Reporter | None = None) -> list[str]:
    """Convenience: load a model and summarize plain strings (ids ``text-0``, ``text-1``, ...)."""
    summarizer = load_summarizer(model, device, dtype, reporter=reporter)
    examples = [Example(f"text-{i}", text) for i, text in enumerate(texts)]
    return summarize_examples(summarizer, examples, settings or SummarizeSettings(), reporter)


class InOrder:
    """Summaries arrive longest batch first; ``emit(rows)`` receives them in input order as soon as every
    earlier one is done, so output streams while the job runs. ``rest()`` gives the finished rows not yet
    emitted (after an interruption: what would otherwise be lost)."""

    def __init__(self, examples: Sequence[Example], emit: Callable[[list[dict[str, Any]]], None]):
        self.examples, self.emit = examples, emit
        self.done: dict[int, str] = {}
        self.next = 0  # first index not yet emitted

    def add(self, index: int, summary: str) -> None:
        self.done[index] = summary
        ready = []
        while self.next in self.done:
            ready.append(self._row(self.next))
            self.next += 1
        if ready:
            self.emit(ready)

    def rest(self) -> list[dict[str, Any]]:
        return [self._row(i) for i in sorted(self.done) if i >= self.next]

    def rows(self) -> list[dict[str, Any]]:
        """Every finished row, in input order."""
        return [self._row(i) for i in sorted(self.done)]

    def _row(self, index: int) -> dict[str, Any]:
        return {"id": self.examples[index].id, "summary": self.done[index]}


class OutputFile:
    """``--output``: every finished summary is appended at once to ``<output>.partial`` (one flushed JSON
    line each), so even a killed run loses nothing; :meth:`finish` then writes ``<output>`` atomically, in
    input order, and removes the journal. With ``skip_done`` the rows already in ``<output>`` and in a
    journal left by a killed run are kept and their ids are not summarized again.

    One job at a time: ``<output>.lock`` is locked (:class:`srsum.locks.Lock`, the holder's pid in it) until
    :meth:`close`. Under a launcher the main process (``rank`` 0) holds the lock, reads what is done and writes
    the output; process ``rank`` r > 0 only journals its own summaries, to ``<output>.partial.<r>``, which the
    main process reads back with ``skip_done`` and removes when the output is written. The journal is opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when it is new): a symbolic link
    planted there is refused. ``<output>`` itself may be a link the user made: the file it points to is written
    (the journal and the lock sit beside that file). A write error is a RuntimeFailure naming the file."""

    def __init__(self, path: str | Path, skip_done: bool = False, rank: int = 0):
        from srsum.locks import Lock

        given = Path(path).expanduser()
        self.path = Path(os.path.realpath(given)) if given.is_symlink() else given
        self.journal = self.path.with_name(self.path.name + ".partial" + (f".{rank}" if rank else ""))
        self.done: dict[str, dict[str, Any]] = {}
        self._handle = None
        self.fresh = not skip_done  # the journal is new (O_EXCL), an older run's being removed
        self.lock = None if rank else Lock(self.path.with_name(self.path.name + ".lock"), f"--output {given}").acquire()
        try:
            self._start(skip_done, main=not rank)
        except BaseException:
            self.close()
            raise

    def _other_journals(self) -> list[Path]:
        """The journals of the other processes of a launched run (``<output>.partial.<rank>``)."""
        return sorted(path for path in self.path.parent.glob(self.path.name + ".partial.*")
                      if path.name.rsplit(".", 1)[-1].isdigit())

    def _start(self, skip_done: bool, main: bool) -> None:
        from srsum.locks import planted_link_error

        if self.journal.is_symlink():
            raise planted_link_error(self.journal, "the journal of --output")
        if not skip_done:
            self.journal.unlink(missing_ok=True)  # an older run's: its rows are not this run's
            for journal in self._other_journals() if main else []:
                journal.unlink(missing_ok=True)
            return
        if not main:
            return  # the main process reads what is done and shares out the rest
        journals = [self.journal] + [path for path in self._other_journals() if not path.is_symlink()]
        for row in _readable_rows(self.path) + [row for path in journals for row in _readable_rows(path, follow=False)]:
            self.done[row["id"]] = row

    def todo(self, examples: Sequence[Example]) -> list[Example]:
        """The examples whose ids have no summary yet."""
        return [example for example in examples if example.id not in self.done]

    def add(self, row: dict[str, Any]) -> None:
        from srsum.checkpoints import write_errors
        from srsum.locks import open_no_follow

        if self._handle is None:
            flags = os.O_WRONLY | os.O_APPEND | (0 if self.fresh else os.O_CREAT)
            handle = open_no_follow(self.journal, flags, "the journal of --output", new=self.fresh)
            self._handle = os.fdopen(handle, "a", encoding="utf-8")
        with write_errors(self.journal):
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._handle.flush()
        self.done[row["id"]] = row

    def finish(self, examples: Sequence[Example]) -> int:
        """Write every summary held (those of ``examples`` in their order, then any others kept from before)
        atomically to the output; returns how many rows it holds."""
        self._close_journal()
        order = {example.id: i for i, example in enumerate(examples)}
        rows = sorted(self.done.values(), key=lambda row: order.get(row["id"], len(order)))
        write_jsonl(self.path, rows)
        for journal in [self.journal] + self._other_journals():
            journal.unlink(missing_ok=True)
        return len(rows)

    def _close_journal(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError:  # a flush the full disk refused: the lines written so far are in the journal
                pass

    def close(self) -> None:
        """Close the journal and release the lock (the journal stays when :meth:`finish` was not reached)."""
        self._close_journal()
        if self.lock is not None:
            self.lock.release()


def _readable_rows(path: Path, follow: bool = True) -> list[dict[str, Any]]:
    """The ``{id, summary}`` rows of a JSON Lines file; a line cut short by a killed write is skipped.
    ``follow=False``: a symbolic link at ``path`` is refused (srsum's own files)."""
    if not path.is_file():
        return []
    if follow:
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        from srsum.locks import open_no_follow

        with os.fdopen(open_no_follow(path, os.O_RDONLY, "the journal of --output"), "rb") as stream:
            text = stream.read().decode("utf-8", errors="replace")
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str) and "summary" in row:
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write JSON Lines atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SrsumError(f"cannot write {path}: it is a folder")
    ensure_writable_dir(path.parent if str(path.parent) else ".", "output folder")
    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
