"""Training settings (:class:`TrainingConfig`), the result, the interruption, and how a run folder is named
or found again for ``--resume``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from srsum.checkpoints import MODELS_DIR, find_run_dirs, list_checkpoints, read_trainer_state
from srsum.engine.settings import clamp_from_text, clamp_to_text
from srsum.errors import SrsumError, UsageError
from srsum.tokenization import DEFAULT_MAX_SOURCE_LENGTH, DEFAULT_MAX_TARGET_LENGTH

BEST_METRICS = ("rougeLsum", "rougeL", "rouge1", "rouge2", "loss")
DEFAULT_ATTENTION = "srformer"
DEFAULT_SEG_SIZE = 64

@dataclass
class TrainingConfig:
    """Every training setting; recorded under ``args`` in each checkpoint's trainer_state.json."""

    model: str  # a pretrained T5/BART or srsum checkpoint; "" with model_config
    dataset: str
    attention: str | None = None  # None: srformer for a new run, the checkpoint's when resuming
    seg_size: int | None = None  # None: 64 for a new run, the checkpoint's when resuming
    schedule_length: int | None = None  # G; None: max_target_length
    w_init: str | None = None  # "calibrated" or "paper"; None: the engine's default (calibrated)
    memory_ratio: float | None = None  # ||rec|| / ||local|| the calibration aims for; None: the engine's (0.05)
    clamp: str | float | None = None  # products' clamp: "off" or a bound; None: the family's (off for both)
    transfer_steps: int = 0  # attention transfer (srsum.engine.transfer) of a new run's W, λ, θ before fine-tuning
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
    model_config: str | None = None  # config.json (or its folder): train a new, randomly initialised model
    tokenizer: str | None = None  # tokenizer folder (default: the model's, or the model_config folder's)
    skip_nonfinite: int = 0  # batches with a non-finite loss or gradients skipped (with a warning) before stopping
    allow_data_change: bool = False  # --resume on training data that changed since the checkpoint (a warning)

    def engine_settings(self) -> dict[str, Any]:
        """The conversion settings given (w_init, memory_ratio, clamp: "off" is None there) for ``convert``."""
        given = {name: getattr(self, name) for name in ("w_init", "memory_ratio", "clamp")
                 if getattr(self, name) is not None}
        if "clamp" in given:
            given["clamp"] = clamp_from_text(given["clamp"])
        return given

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
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("eval_samples", "warmup_steps", "transfer_steps", "skip_nonfinite"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.best_metric not in BEST_METRICS:
            raise UsageError(f"--best-metric: unknown metric {self.best_metric!r}; choose one of "
                             f"{', '.join(BEST_METRICS)}")
        if self.w_init is not None:
            from srsum.engine.settings import W_INITS

            w_init = str(self.w_init).strip().lower()
            if w_init not in W_INITS:
                raise UsageError(f"--w-init must be one of {', '.join(W_INITS)}, got {self.w_init!r}")
            self.w_init = w_init
        if self.memory_ratio is not None:
            try:
                ratio = float(self.memory_ratio)
            except (TypeError, ValueError):
                ratio = math.nan
            if not 0 < ratio < math.inf:
                raise UsageError(f"--memory-ratio must be a positive number, got {self.memory_ratio}")
            self.memory_ratio = ratio
        if self.clamp is not None:  # kept as "off" (None means the family's default here)
            try:
                bound = clamp_from_text(self.clamp)
            except SrsumError as error:
                raise UsageError(str(error)) from None
            self.clamp = clamp_to_text(bound)
        if self.model_config is not None and self.model:
            raise UsageError("--model and --config exclude each other: --model starts from pretrained weights, "
                             "--config from a new, randomly initialised model")
        if self.attention is not None:
            from srsum.engine import normalize_variant

            try:
                self.attention = normalize_variant(self.attention)
            except SrsumError as error:
                raise UsageError(f"--{error}") from None
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


def model_label(config: TrainingConfig) -> str:
    """What a run starts from, in words: the model, or ``<config folder>-new`` for a model built from --config."""
    if config.model_config is None:
        return Path(config.model).name
    path = Path(config.model_config).expanduser()
    return f"{(path if path.suffix != '.json' else path.resolve().parent).name}-new"


def default_run_name(config: TrainingConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    seg = config.seg_size or DEFAULT_SEG_SIZE
    return _slug(f"{model_label(config)}-{config.attention or DEFAULT_ATTENTION}-seg{seg}-{stamp}")


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
        raise UsageError(f"--resume: checkpoint {checkpoint} was trained with --attention {saved_attention}, not "
                         f"{config.attention}; drop --attention or start a new run with another --output-dir")
    if config.seg_size is not None and saved_seg is not None and config.seg_size != saved_seg:
        raise UsageError(f"--resume: checkpoint {checkpoint} was trained with --seg-size {saved_seg}, not "
                         f"{config.seg_size}; drop --seg-size or start a new run with another --output-dir")
    saved_conversion = {name: saved_model.get(f"srformer_{name}") for name in ("w_init", "memory_ratio")}
    if "srformer_clamp" in saved_model:  # null there: no clamp
        saved_conversion["clamp"] = clamp_to_text(saved_model["srformer_clamp"])
    for flag, name in (("--w-init", "w_init"), ("--memory-ratio", "memory_ratio"), ("--clamp", "clamp")):
        given, saved = getattr(config, name), saved_conversion.get(name)
        if given is not None and saved is not None and given != saved:
            raise UsageError(f"--resume: checkpoint {checkpoint} was converted with {flag} {saved}, not {given}; "
                             f"drop {flag} (a resumed run is not converted again) or start a new run with another "
                             "--output-dir")
    state = read_trainer_state(checkpoint)
    saved_args = state.get("args")
    if not isinstance(saved_args, dict):
        raise SrsumError(f"--resume: {checkpoint} has no training settings in its trainer_state.json")
    _check_given_settings(config, saved_args, checkpoint)
    known = {f.name for f in fields(TrainingConfig)}
    resumed = TrainingConfig(**{key: value for key, value in saved_args.items() if key in known})
    resumed.resume = True
    resumed.output_dir = str(checkpoint.parent)
    for name in _RESUME_FREE[3:]:  # hardware choices and what to do about faults may change between sessions
        setattr(resumed, name, getattr(config, name))
    return resumed.validate()


# settings a resumed run takes from the command line rather than from its checkpoint
_RESUME_FREE = ("resume", "output_dir", "run_name", "cpu", "skip_nonfinite", "allow_data_change")


def _check_given_settings(config: TrainingConfig, saved_args: dict[str, Any], checkpoint: Path) -> None:
    """SrsumError naming the first setting of ``config`` that was set (differs from its default) and contradicts
    the checkpoint's: a resumed run keeps every training setting of its checkpoint."""
    defaults = TrainingConfig(model="", dataset="")
    for item in fields(TrainingConfig):
        name = item.name
        given = getattr(config, name)
        if name in _RESUME_FREE or name not in saved_args or given == getattr(defaults, name):
            continue
        saved = saved_args[name]
        if given != saved:
            flag = f"--{name.replace('_', '-')}"
            shown = (lambda value: "on" if value is True else "off" if value is False else value)
            raise UsageError(f"--resume: checkpoint {checkpoint} was trained with {flag} {shown(saved)}, not "
                             f"{shown(given)}; drop {flag} (a resumed run keeps the settings of its checkpoint) or "
                             "start a new run with another --output-dir")
