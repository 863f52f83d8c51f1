"""Fine-tuning T5/BART with SRformer cross-attention: the library behind ``srsum train``.

:func:`train` converts a pretrained model (``srsum.engine.load_model`` with ``attention``, ``seg_size``
and ``schedule_length``; G defaults to the max target length), trains it with AdamW and a linear
schedule under ``accelerate`` (single process, or several GPUs with ``accelerate launch``), evaluates
validation loss and ROUGE after every epoch, and writes checkpoints atomically (see
:mod:`srsum.checkpoints`). ``resume=True`` continues the last complete checkpoint of the run folder to
the same total step count, with the settings recorded in its ``trainer_state.json``.

A new run converts the plain model with ``w_init`` (default calibrated: W scaled per layer so that the
recurrent term is ``memory_ratio`` times the local one) on its first training batches; a resumed run
loads its checkpoint as saved. Per decoder layer, the recurrent/local norm ratio and the RAF firing rate
are reported at the start and after every epoch (``srsum.engine.calibration.memory_report``), printed as
one ``memory ...`` line and saved under ``memory`` in the log history and the metrics.

Ctrl-C (KeyboardInterrupt) stops training cleanly: :class:`TrainingInterrupted` is raised, naming the
last complete checkpoint, which stays intact.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from srsum import __version__
from srsum.checkpoints import (BEST, CHECKPOINT_PREFIX, MODELS_DIR, ensure_writable_dir, find_run_dirs,
                               last_checkpoint, list_checkpoints, load_torch_file, prune_checkpoints,
                               read_rng_state, read_trainer_state, rng_state, save_checkpoint, set_rng_state)
from srsum.data import Example, load_examples
from srsum.errors import SrsumError
from srsum.reporting import Reporter
from srsum.summarize import SummarizeSettings, check_model_source, generate_summaries
from srsum.tokenization import DEFAULT_MAX_SOURCE_LENGTH, DEFAULT_MAX_TARGET_LENGTH

BEST_METRICS = ("rougeLsum", "rougeL", "rouge1", "rouge2", "loss")
DEFAULT_ATTENTION = "srformer"
DEFAULT_SEG_SIZE = 64
MEMORY_EXAMPLES = 16  # examples of the calibration batch (the first training batches) and the memory reports


@dataclass
class TrainingConfig:
    """Every training setting; recorded under ``args`` in each checkpoint's trainer_state.json."""

    model: str
    dataset: str
    attention: str | None = None  # None: srformer for a new run, the checkpoint's when resuming
    seg_size: int | None = None  # None: 64 for a new run, the checkpoint's when resuming
    schedule_length: int | None = None  # G; None: max_target_length
    w_init: str | None = None  # "calibrated" or "paper"; None: the engine's default (calibrated)
    memory_ratio: float | None = None  # ||rec|| / ||local|| the calibration aims for; None: the engine's (0.05)
    train_split: str = "train"
    validation_split: str = "validation"
    text_column: str | None = None
    summary_column: str | None = None
    train_limit: int | None = None  # use only the first N training examples
    eval_samples: int = 100  # validation examples scored after each epoch; 0: no validation
    output_dir: str | None = None  # default models/<run_name>
    run_name: str | None = None  # default <model>-<attention>-seg<s>-<timestamp>
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 8  # per process
    eval_batch_size: int | None = None  # default batch_size
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    max_source_length: int = DEFAULT_MAX_SOURCE_LENGTH
    max_target_length: int = DEFAULT_MAX_TARGET_LENGTH
    bf16: bool = False
    cpu: bool = False
    seed: int = 42
    save_steps: int | None = None  # also save every N steps (always after each epoch and at the end)
    save_total_limit: int = 2  # checkpoint-<step> folders kept (best/ is extra)
    best_metric: str = "rougeLsum"
    eval_num_beams: int = 1
    logging_steps: int = 10
    resume: bool = False

    def validate(self) -> TrainingConfig:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "max_source_length": self.max_source_length, "max_target_length": self.max_target_length,
                    "save_total_limit": self.save_total_limit, "eval_num_beams": self.eval_num_beams,
                    "logging_steps": self.logging_steps}
        for name in ("max_steps", "eval_batch_size", "save_steps", "train_limit", "seg_size", "schedule_length"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if value < 1:
                raise SrsumError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("eval_samples", "warmup_steps"):
            if getattr(self, name) < 0:
                raise SrsumError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise SrsumError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise SrsumError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.best_metric not in BEST_METRICS:
            raise SrsumError(f"--best-metric: unknown metric {self.best_metric!r}; choose one of "
                             f"{', '.join(BEST_METRICS)}")
        if self.w_init is not None:
            from srsum.engine.settings import W_INITS

            w_init = str(self.w_init).strip().lower()
            if w_init not in W_INITS:
                raise SrsumError(f"--w-init must be one of {', '.join(W_INITS)}, got {self.w_init!r}")
            self.w_init = w_init
        if self.memory_ratio is not None:
            try:
                ratio = float(self.memory_ratio)
            except (TypeError, ValueError):
                ratio = math.nan
            if not 0 < ratio < math.inf:
                raise SrsumError(f"--memory-ratio must be a positive number, got {self.memory_ratio}")
            self.memory_ratio = ratio
        if self.attention is not None:
            from srsum.engine import normalize_variant

            self.attention = normalize_variant(self.attention)
        return self


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    global_step: int
    total_steps: int
    best: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from: Path | None = None
    main_process: bool = True  # False in the other processes of `accelerate launch` (they print nothing)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "global_step": self.global_step, "total_steps": self.total_steps, "best": self.best,
                "metrics": self.metrics,
                "resumed_from": None if self.resumed_from is None else str(self.resumed_from)}


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C; ``checkpoint`` is the last complete one (None if none was written)."""

    def __init__(self, step: int, run_dir: Path, checkpoint: Path | None):
        self.step, self.run_dir, self.checkpoint = step, run_dir, checkpoint
        where = (f"the last complete checkpoint is {checkpoint}; continue with "
                 f"`srsum train --resume --output-dir {run_dir}`") if checkpoint else "no checkpoint was written yet"
        super().__init__(f"training interrupted at step {step}; {where}")


# ---------------------------------------------------------------------------------------------
# run folder and resuming


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def default_run_name(config: TrainingConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    seg = config.seg_size or DEFAULT_SEG_SIZE
    return _slug(f"{Path(config.model).name}-{config.attention or DEFAULT_ATTENTION}-seg{seg}-{stamp}")


def find_resume_dir(config: TrainingConfig, models_root: str | Path = MODELS_DIR) -> Path:
    """The run folder ``--resume`` continues: ``--output-dir``, ``models/<run-name>`` or the newest run."""
    if config.output_dir is not None:
        return Path(config.output_dir).expanduser()
    if config.run_name is not None:
        return Path(models_root) / config.run_name
    runs = [run for run in find_run_dirs(models_root) if list_checkpoints(run)]
    if not runs:
        raise SrsumError(f"--resume: no complete checkpoint found under {models_root}/; pass the run's --output-dir")
    return runs[0]


def _saved_settings(checkpoint: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SrsumError(f"--resume: cannot read {checkpoint / 'config.json'} ({error})") from None


def resumed_config(config: TrainingConfig, checkpoint: Path) -> TrainingConfig:
    """The saved training settings of ``checkpoint``; SrsumError if ``config`` asks for another variant."""
    from srsum.engine import normalize_variant

    saved_model = _saved_settings(checkpoint)
    saved_attention = saved_model.get("srformer_attention")
    saved_seg = saved_model.get("srformer_seg_size")
    if config.attention is not None and saved_attention is not None \
            and normalize_variant(config.attention) != saved_attention:
        raise SrsumError(f"--resume: checkpoint {checkpoint} was trained with --attention {saved_attention}, not "
                         f"{config.attention}; drop --attention or start a new run with another --output-dir")
    if config.seg_size is not None and saved_seg is not None and config.seg_size != saved_seg:
        raise SrsumError(f"--resume: checkpoint {checkpoint} was trained with --seg-size {saved_seg}, not "
                         f"{config.seg_size}; drop --seg-size or start a new run with another --output-dir")
    for flag, name in (("--w-init", "w_init"), ("--memory-ratio", "memory_ratio")):
        given, saved = getattr(config, name), saved_model.get(f"srformer_{name}")
        if given is not None and saved is not None and given != saved:
            raise SrsumError(f"--resume: checkpoint {checkpoint} was converted with {flag} {saved}, not {given}; "
                             f"drop {flag} (a resumed run is not converted again) or start a new run with another "
                             "--output-dir")
    state = read_trainer_state(checkpoint)
    saved_args = state.get("args")
    if not isinstance(saved_args, dict):
        raise SrsumError(f"--resume: {checkpoint} has no training settings in its trainer_state.json")
    known = {f.name for f in fields(TrainingConfig)}
    resumed = TrainingConfig(**{key: value for key, value in saved_args.items() if key in known})
    resumed.resume = True
    resumed.output_dir = str(checkpoint.parent)
    resumed.cpu = config.cpu  # hardware choices may change between sessions
    return resumed.validate()


# ---------------------------------------------------------------------------------------------
# data


def _load_split(config: TrainingConfig, split: str, limit: int | None, what: str) -> list[Example]:
    examples = load_examples(config.dataset, split=split, text_column=config.text_column,
                             summary_column=config.summary_column, limit=limit)
    usable = [e for e in examples if e.summary is not None and e.summary.strip() and e.text.strip()]
    if not usable:
        raise SrsumError(f"{what} split {split!r} of {config.dataset!r} has no examples with both an article and a "
                         "reference summary; name the columns with --text-column/--summary-column")
    return usable


def _tokenize(tokenizer, model_type: str, examples: list[Example], config: TrainingConfig, reporter: Reporter,
              what: str):
    from srsum.tokenization import encode_examples

    truncated: list[int] = []
    with reporter.progress(f"tokenizing {what}", len(examples)) as advance:
        rows = encode_examples(tokenizer, model_type, [e.text for e in examples], [e.summary for e in examples],
                               config.max_source_length, config.max_target_length,
                               on_truncate=lambda i, length, limit: truncated.append(length), advance=advance)
    if truncated:
        reporter.warn(f"{len(truncated)} of {len(examples)} {what} articles are longer than the max source length "
                      f"{config.max_source_length} (longest {max(truncated)} tokens) and were truncated")
    return rows


# ---------------------------------------------------------------------------------------------
# training


class _Silent(Reporter):
    def warn(self, message: str) -> None:
        pass


def _reset_accelerate_state() -> None:
    # train() may run several times in one process (tests, notebooks); accelerate keeps its settings in
    # process-wide singletons that refuse a second, different configuration unless cleared.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _parameter_groups(model, weight_decay: float):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _validation(model, tokenizer, rows, examples, config: TrainingConfig, accelerator, reporter: Reporter):
    """Validation loss (per label token) and ROUGE of greedy/beam summaries on the validation sample."""
    import torch
    from torch.utils.data import DataLoader

    from srsum.metrics import rouge_scores
    from srsum.tokenization import Seq2SeqCollator

    batch_size = config.eval_batch_size or config.batch_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    try:
        loader = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=Seq2SeqCollator(tokenizer.pad_token_id))
        with torch.no_grad(), accelerator.autocast():
            for batch in loader:
                batch = {key: value.to(device) for key, value in batch.items()}
                tokens = int((batch["labels"] != -100).sum())
                loss = model(**batch, use_cache=False).loss
                total_loss += float(loss) * tokens
                total_tokens += tokens
    finally:
        model.train(was_training)
    settings = SummarizeSettings(num_beams=config.eval_num_beams, max_length=config.max_target_length,
                                  no_repeat_ngram_size=0, batch_size=batch_size)
    with accelerator.autocast():
        predictions = generate_summaries(model, tokenizer, [row.input_ids for row in rows], settings, reporter,
                                         description="validating")
    metrics = {"loss": total_loss / max(total_tokens, 1)}
    metrics.update(rouge_scores(predictions, [e.summary or "" for e in examples]))
    return metrics


def _memory_rows(report: list[dict]) -> list[dict[str, Any]]:
    """memory_report rows as saved: the ratio to 4 significant digits (it may be tiny or huge), rates to 4 places."""
    return [{"layer": int(row["layer"]), "ratio": float(f"{row['ratio']:.4g}"),
             "firing_rate": None if row["firing_rate"] is None else round(float(row["firing_rate"]), 4)}
            for row in report]


def memory_line(title: str, rows: list[dict[str, Any]]) -> str:
    """One line such as ``memory at start: layer 0 ratio 0.05 firing 0.11 | layer 1 ratio 0.05 firing 0.09``."""
    parts = [f"layer {row['layer']} ratio {row['ratio']:.3g}"
             + ("" if row["firing_rate"] is None else f" firing {row['firing_rate']:.2f}") for row in rows]
    return f"memory {title}: " + " | ".join(parts)


def _merge_log(log_history: list[dict[str, Any]], step: int, values: dict[str, Any]) -> None:
    """Add ``values`` to the log entry of ``step`` (the last one, if it is that step's), else a new entry."""
    if log_history and log_history[-1].get("step") == step:
        log_history[-1].update(values)
    else:
        log_history.append({"step": step, **values})


def _is_better(metric: str, value: float, best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    return value < best["value"] if metric == "loss" else value > best["value"]


def train(config: TrainingConfig, reporter: Reporter | None = None, *, models_root: str | Path = MODELS_DIR,
          stop_after_steps: int | None = None, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Fine-tune and checkpoint; see the module docstring.

    ``stop_after_steps`` (a test hook) raises KeyboardInterrupt right after that optimizer step (and its
    checkpoint, if one is due), exactly as a Ctrl-C there would; ``on_step(step)`` is called after each
    optimizer step. Raises SrsumError for bad input and :class:`TrainingInterrupted` on Ctrl-C.
    """
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    config.validate()
    _reset_accelerate_state()
    accelerator = Accelerator(mixed_precision="bf16" if config.bf16 else "no",
                              gradient_accumulation_steps=config.gradient_accumulation_steps, cpu=config.cpu)
    main = accelerator.is_main_process
    reporter = (reporter or Reporter()) if main else _Silent()

    # ---- where: the run folder (decided on the main process, shared with the others)
    resume_from: Path | None = None
    if config.resume:
        run_dir = find_resume_dir(config, models_root)
        resume_from = last_checkpoint(run_dir)
        if resume_from is None:
            raise SrsumError(f"--resume: no complete checkpoint in {run_dir}")
        config = resumed_config(config, resume_from)
    else:
        check_model_source(config.model)
        choice = [config.output_dir or str(Path(models_root) / (config.run_name or default_run_name(config)))]
        if accelerator.num_processes > 1:
            broadcast_object_list(choice)
        run_dir = Path(choice[0]).expanduser()
        if list_checkpoints(run_dir):
            raise SrsumError(f"{run_dir} already holds checkpoints; pass --resume to continue that run, or choose "
                             "another --output-dir")
        config.output_dir = str(run_dir)
        config.attention = config.attention or DEFAULT_ATTENTION
        config.seg_size = config.seg_size or DEFAULT_SEG_SIZE
        config.schedule_length = config.schedule_length or config.max_target_length
    created = not run_dir.exists()
    if main:
        ensure_writable_dir(run_dir)
    config.run_name = config.run_name or run_dir.name
    try:
        return _train(config, accelerator, reporter, run_dir, resume_from, stop_after_steps, on_step)
    except BaseException:
        if main and created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # nothing was written: leave no empty run folder behind
        raise


def _train(config: TrainingConfig, accelerator, reporter: Reporter, run_dir: Path, resume_from: Path | None,
           stop_after_steps: int | None, on_step: Callable[[int], None] | None) -> TrainResult:
    import torch
    from accelerate.utils import broadcast_object_list, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from srsum.engine import load_config, load_model
    from srsum.engine.calibration import DEAD_RATIO, dead_layers, memory_report
    from srsum.tokenization import Seq2SeqCollator, load_tokenizer, resolve_max_source_length

    main = accelerator.is_main_process
    set_seed(config.seed)

    # ---- what: tokenizer and data, then the model (a new run is calibrated on its first training batches)
    source = resume_from or config.model
    source_config = load_config(str(source))  # one-line errors for a folder that is not a model
    tokenizer = load_tokenizer(source)
    resolve_max_source_length(SimpleNamespace(config=source_config), config.max_source_length)
    train_examples = _load_split(config, config.train_split, config.train_limit, "training")
    eval_examples = (_load_split(config, config.validation_split, config.eval_samples, "validation")
                     if config.eval_samples > 0 else [])
    train_rows = _tokenize(tokenizer, source_config.model_type, train_examples, config, reporter, "training")
    eval_rows = (_tokenize(tokenizer, source_config.model_type, eval_examples, config, reporter, "validation")
                 if eval_examples else [])
    collator = Seq2SeqCollator(tokenizer.pad_token_id)

    def epoch_order(epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(config.seed + epoch)
        return torch.randperm(len(train_rows), generator=generator).tolist()

    # the first training batches (epoch 0's order), at most MEMORY_EXAMPLES examples: calibrates a new run's W
    # and is where memory is measured when there is no validation
    first_rows = [train_rows[i] for i in epoch_order(0)[:min(2 * config.batch_size, MEMORY_EXAMPLES)]]
    train_batch = collator(first_rows)
    eval_batch = collator(eval_rows[:MEMORY_EXAMPLES]) if eval_rows else None
    try:
        if resume_from is not None:
            model = load_model(str(resume_from), dtype=torch.float32)
        else:  # a plain model is converted (and calibrated on its first training batches) on its device;
            # an srsum checkpoint as the start of a new run loads as saved (the conversion settings unused)
            init = {name: getattr(config, name) for name in ("w_init", "memory_ratio")
                    if getattr(config, name) is not None}
            model = load_model(config.model, attention=config.attention, seg_size=config.seg_size,
                               dtype=torch.float32, device=accelerator.device,
                               schedule_length=config.schedule_length, calibration_batch=train_batch, **init)
    except SrsumError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise SrsumError(f"model: cannot load {str(source)!r} as an srsum checkpoint or a T5/BART model "
                         f"({reason})") from None
    model_type = model.config.model_type
    if resume_from is None:  # record what the engine used
        config.w_init = model.config.srformer_w_init
        config.memory_ratio = model.config.srformer_memory_ratio

    def epoch_loader(epoch: int):
        loader = DataLoader([train_rows[i] for i in epoch_order(epoch)], batch_size=config.batch_size,
                            shuffle=False, collate_fn=collator)
        return accelerator.prepare(loader)

    steps_per_epoch = math.ceil(len(epoch_loader(0)) / config.gradient_accumulation_steps)
    total_steps = config.max_steps or config.epochs * steps_per_epoch

    # ---- how: optimizer, schedule, restored state
    model.train()
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    processes = accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps * processes, total_steps * processes)
    state: dict[str, Any] = {}
    if resume_from is not None:
        state = read_trainer_state(resume_from)
        optimizer.load_state_dict(load_torch_file(resume_from / "optimizer.pt"))
        scheduler.load_state_dict(load_torch_file(resume_from / "scheduler.pt"))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if resume_from is not None:
        saved_rng = read_rng_state(resume_from)
        if saved_rng is None:
            reporter.warn(f"{resume_from} has no rng.json (an older srsum wrote a pickled rng.pt, which is never "
                          "loaded): the random state starts afresh")
        else:
            set_rng_state(saved_rng)

    global_step = int(state.get("global_step", 0))
    best = state.get("best")
    log_history: list[dict[str, Any]] = list(state.get("log_history", []))
    last_metrics: dict[str, Any] = dict(state.get("metrics", {}))
    checkpoint = resume_from
    if resume_from is not None:
        reporter.info(f"resuming {run_dir} from {resume_from.name} (step {global_step} of {total_steps})")
    else:
        reporter.info(f"training {config.model} with {config.attention} cross-attention (seg size {config.seg_size}, "
                      f"G {config.schedule_length}) into {run_dir}: {total_steps} steps")

    dead_warned = False

    def memory(batch, when: str, note: str = "") -> list[dict[str, Any]]:
        """The memory report on ``batch`` (main process; [] without a recurrent term), printed; dead layers warned
        about once a run."""
        nonlocal dead_warned
        if not main:
            return []
        rows = _memory_rows(memory_report(accelerator.unwrap_model(model), batch))
        if rows:
            reporter.info(memory_line(when + note, rows))
            dead = dead_layers(rows)
            if dead and not dead_warned:
                dead_warned = True
                reporter.warn(f"memory {when}: decoder layer{'s' if len(dead) > 1 else ''} "
                              f"{', '.join(map(str, dead))} pass{'' if len(dead) > 1 else 'es'} nothing on (the "
                              f"recurrent term is below {DEAD_RATIO:g} of the local one, or no RAF entry fires)")
        return rows

    if resume_from is not None:
        memory(train_batch, f"at step {global_step}", " (resumed)")
    else:
        calibration = getattr(model.config, "srformer_calibration", None)
        start = memory(train_batch, "at start", f" (W calibrated to ratio {calibration['memory_ratio']:g} on "
                                                f"{calibration['examples']} training examples)" if calibration else "")
        if start:
            log_history.append({"step": 0, "memory": start})

    def trainer_state() -> dict[str, Any]:
        unwrapped = accelerator.unwrap_model(model)
        return {
            "global_step": global_step, "epoch": round(global_step / steps_per_epoch, 4), "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch, "num_train_examples": len(train_rows),
            "num_eval_examples": len(eval_rows), "num_processes": processes, "metrics": last_metrics,
            "best": best, "log_history": log_history, "args": asdict(config),
            "srformer": {k: v for k, v in unwrapped.config.to_dict().items() if k.startswith("srformer_")},
            "model_type": model_type, "srsum_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def save(with_best: bool) -> Path:
        accelerator.wait_for_everyone()
        folder = run_dir / f"{CHECKPOINT_PREFIX}{global_step}"
        if main:
            unwrapped = accelerator.unwrap_model(model)
            current = trainer_state()
            if with_best:
                save_checkpoint(run_dir / BEST, unwrapped, tokenizer, current)
            save_checkpoint(folder, unwrapped, tokenizer, current, optimizer, scheduler, rng_state())
            prune_checkpoints(run_dir, config.save_total_limit)
        accelerator.wait_for_everyone()
        return folder

    running_loss, running_count = 0.0, 0
    try:
        with reporter.progress("training", total_steps, completed=global_step) as advance:
            epoch = global_step // steps_per_epoch
            while global_step < total_steps:
                loader = epoch_loader(epoch)
                skip = (global_step - epoch * steps_per_epoch) * config.gradient_accumulation_steps
                if skip:
                    loader = accelerator.skip_first_batches(loader, skip)
                for batch in loader:
                    with accelerator.accumulate(model):
                        loss = model(**batch, use_cache=False).loss
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    running_loss += float(loss.detach())
                    running_count += 1
                    if not accelerator.sync_gradients:
                        continue
                    global_step += 1
                    mean_loss = running_loss / running_count
                    advance(1, loss=mean_loss)
                    if global_step % config.logging_steps == 0 or global_step == total_steps:
                        log_history.append({"step": global_step, "loss": round(mean_loss, 5),
                                            "learning_rate": scheduler.get_last_lr()[0]})
                        running_loss, running_count = 0.0, 0
                    end_of_epoch = global_step % steps_per_epoch == 0 or global_step == total_steps
                    improved = False
                    if end_of_epoch and not eval_rows:
                        rows = memory(train_batch, f"after step {global_step}")
                        if rows:
                            last_metrics = {"step": global_step, "epoch": round(global_step / steps_per_epoch, 4),
                                            "memory": rows}
                            _merge_log(log_history, global_step, {"memory": rows})
                    if end_of_epoch and eval_rows:
                        metrics = None
                        if main:
                            metrics = _validation(accelerator.unwrap_model(model), tokenizer, eval_rows,
                                                  eval_examples, config, accelerator, reporter)
                            metrics = {key: round(value, 4) for key, value in metrics.items()}
                        if processes > 1:
                            holder = [metrics]
                            broadcast_object_list(holder)
                            metrics = holder[0]
                        last_metrics = {"step": global_step, "epoch": round(global_step / steps_per_epoch, 4),
                                        **metrics}
                        entry = {"step": global_step, **{f"eval_{k}": v for k, v in metrics.items()}}
                        reporter.metrics(f"validation after step {global_step}", metrics)
                        rows = memory(eval_batch, f"after step {global_step}", " (validation)")
                        if rows:
                            last_metrics["memory"] = entry["memory"] = rows
                        log_history.append(entry)
                        value = metrics[config.best_metric]
                        if _is_better(config.best_metric, value, best):
                            best = {"metric": config.best_metric, "value": value, "step": global_step}
                            improved = True
                    due = config.save_steps is not None and global_step % config.save_steps == 0
                    if end_of_epoch or due:
                        checkpoint = save(improved)
                    if on_step is not None:
                        on_step(global_step)
                    if stop_after_steps is not None and global_step >= stop_after_steps:
                        raise KeyboardInterrupt
                    if global_step >= total_steps:
                        break
                epoch += 1
    except KeyboardInterrupt:
        raise TrainingInterrupted(global_step, run_dir, last_checkpoint(run_dir)) from None
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, checkpoint, global_step, total_steps, best, last_metrics, resume_from, main)
