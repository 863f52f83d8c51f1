"""The training loop as named steps: :func:`train` sets up the run folder, then a :class:`_Run` loads the data
and the model (``setup``), and trains epoch by epoch (``epoch``), optimizer step by optimizer step (``step``),
validating (``evaluate``) and saving (``save``) at the end of each epoch.

The run folder is locked (:class:`srsum.locks.Lock`) while a run writes there. A step whose loss or gradients are
not finite stops the run (or, with ``skip_nonfinite``, is skipped without an update), and weights that are not
finite are never saved. A resumed run checks that its training data is the one its checkpoint recorded
(:mod:`srsum.training.fingerprint`).

Under ``torchrun`` / ``accelerate launch`` with N processes the run is data-parallel: each process takes its
part of every global micro-batch (:mod:`srsum.training.batches`), the model is wrapped for gradient
synchronisation (``accelerator.prepare``), validation is sharded and gathered, and only the main process
prints and writes (each process's RNG state is saved beside the main one's, so ``--resume`` is exact).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from srsum import __version__
from srsum.checkpoints import (BEST, CHECKPOINT_PREFIX, MODELS_DIR, ensure_writable_dir, last_checkpoint,
                               list_checkpoints, load_torch_file, prune_checkpoints, read_rng_state,
                               read_trainer_state, recover_run_dir, rng_state, save_checkpoint, set_rng_state)
from srsum.engine.settings import clamp_to_text
from srsum.errors import RuntimeFailure, SrsumError
from srsum.locks import LOCK_FILE, Lock
from srsum.reporting import Reporter
from srsum.training.config import (DEFAULT_ATTENTION, DEFAULT_SEG_SIZE, TrainingConfig, TrainingInterrupted,
                                   TrainResult, default_run_name, find_resume_dir, resumed_config)
from srsum.training.batches import epoch_order, label_tokens, loss_sum, micro_batches, step_groups, steps_per_epoch
from srsum.training.distributed import (agree, gather_shards, make_accelerator, on_main, reduce_sums,
                                        single_process_launch_warning)
from srsum.training.evaluation import clamp_warning, is_better, memory_line, memory_rows, merge_log, validation
from srsum.training.fingerprint import data_fingerprint, describe_change
from srsum.training.inputs import config_file, load_split, new_model_folder, tokenize_split

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.json")
MEMORY_EXAMPLES = 16  # examples of the calibration batch (the first training batches) and the memory reports


class _Silent(Reporter):
    def warn(self, message: str) -> None:
        pass


def _parameter_groups(model, weight_decay: float):
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(config: TrainingConfig, reporter: Reporter | None = None, *, models_root: str | Path = MODELS_DIR,
          stop_after_steps: int | None = None, on_step: Callable[[int], None] | None = None,
          log_lines: bool = False) -> TrainResult:
    """Fine-tune and checkpoint; see the package docstring.

    ``log_lines``: also report one plain ``<UTC time> step S/T: loss L, learning rate R, N target tokens/s`` line
    (and the last measured memory ratio) every ``logging_steps`` steps
    (``reporter.info``; the CLI asks for it when stderr is not a terminal, where no progress bar is drawn).

    ``stop_after_steps`` (a test hook) raises KeyboardInterrupt right after that optimizer step (and its
    checkpoint, if one is due), exactly as a Ctrl-C there would; ``on_step(step)`` is called after each
    optimizer step. Raises SrsumError for bad input and :class:`TrainingInterrupted` on Ctrl-C.
    """
    config.validate()
    # gradient accumulation is done by _Run.step (the loss of a step is normalised over all its label tokens)
    accelerator = make_accelerator(config.cpu, mixed_precision="bf16" if config.bf16 else "no")
    main = accelerator.is_main_process
    reporter = (reporter or Reporter()) if main else _Silent()
    warning = single_process_launch_warning() if accelerator.num_processes == 1 else None
    if warning:
        reporter.warn(warning)
    config, run_dir, resume_from = agree(lambda: _run_folder(config, accelerator, models_root), accelerator)
    created = not run_dir.exists()
    # the main process writes: the folder must be writable, is locked against a second run, and is repaired after
    # a crash (leftover .tmp folders)
    lock = agree(lambda: _lock_run_dir(run_dir) if main else None, accelerator)
    config.run_name = config.run_name or run_dir.name
    try:
        try:
            run = _Run(config, accelerator, reporter, run_dir, resume_from)
            run.log_lines = log_lines
            run.setup()
            return run.train(stop_after_steps, on_step)
        finally:
            if lock is not None:
                lock.release()
    except BaseException:
        if main and created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # nothing was written: leave no empty run folder behind
        raise


def _run_lock(run_dir: Path) -> Lock:
    return Lock(run_dir / LOCK_FILE, f"run folder {run_dir}")


def _lock_run_dir(run_dir: Path) -> Lock:
    """Create (if need be) and lock the run folder, then remove the leftovers of a killed run there."""
    lock = _run_lock(ensure_writable_dir(run_dir)).acquire()
    try:
        recover_run_dir(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def _run_folder(config: TrainingConfig, accelerator, models_root) -> tuple[TrainingConfig, Path, Path | None]:
    """The run folder and, when resuming, the checkpoint and its settings (decided on the main process)."""
    from srsum.summarize import check_model_source

    if config.resume:
        def find() -> tuple[Path, Path | None]:
            run_dir = find_resume_dir(config, models_root)
            return run_dir, last_checkpoint(run_dir)

        run_dir, resume_from = on_main(find, accelerator)  # the newest run as the main process sees it
        if resume_from is None:
            raise SrsumError(f"--resume: no complete checkpoint in {run_dir}")
        return resumed_config(config, resume_from), run_dir, resume_from
    if config.model_config is None:
        check_model_source(config.model)
    run_dir = Path(on_main(lambda: config.output_dir or str(Path(models_root) / (config.run_name or
                                                                               default_run_name(config))),
                           accelerator)).expanduser()  # the time stamp of the default name: the main process's
    if list_checkpoints(run_dir):
        _run_lock(run_dir).check()  # a run writing there now: say so, with its pid
        raise SrsumError(f"{run_dir} already holds checkpoints; pass --resume to continue that run, or choose "
                         "another --output-dir")
    config.output_dir = str(run_dir)
    config.attention = config.attention or DEFAULT_ATTENTION
    config.seg_size = config.seg_size or DEFAULT_SEG_SIZE
    config.schedule_length = config.schedule_length or config.max_target_length
    return config, run_dir, None


class _Run:
    """One training run: what it trains on, where it stands, and the named steps of the loop."""

    def __init__(self, config: TrainingConfig, accelerator, reporter: Reporter, run_dir: Path,
                 resume_from: Path | None):
        self.config, self.accelerator, self.reporter = config, accelerator, reporter
        self.run_dir, self.resume_from = run_dir, resume_from
        self.main = accelerator.is_main_process
        self.processes = accelerator.num_processes
        self.checkpoint = resume_from
        self.global_step = 0
        self.best: dict[str, Any] | None = None
        self.log_history: list[dict[str, Any]] = []
        self.last_metrics: dict[str, Any] = {}
        self.dead_warned = self.clamp_warned = False
        self.running_loss, self.running_count = 0.0, 0
        self.log_lines = False
        self.window_tokens, self.window_start = 0.0, time.perf_counter()  # label tokens since the last log line
        self.scratch: tempfile.TemporaryDirectory | None = None  # the start model built from --config
        self.source_type: str | None = None  # model_type of the start model (a plain T5/BART is converted here)
        self.transfer: dict[str, Any] | None = None  # what attention transfer did (a new run with --transfer-steps)
        self.data: dict[str, Any] = {}  # the training data's fingerprint (srsum.training.fingerprint)
        self.skipped_steps: list[int] = []  # steps whose batch was skipped for a non-finite loss or gradients
        self.skipped_now = 0  # of them, skipped by this process (--skip-nonfinite counts these)

    # ---- setup: data, model, optimizer, restored state

    def setup(self) -> None:
        from accelerate.utils import set_seed

        set_seed(self.config.seed)
        agree(self._load, self.accelerator)  # an SrsumError on any process stops every process
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)  # several: wrapped for DDP
        if self.saved_rng is not None:
            set_rng_state(self.saved_rng)
        self._announce()

    def _load(self) -> None:
        self._load_data()
        self._load_model()
        self._build_optimizer()
        self._read_state()

    def _load_data(self) -> None:
        from srsum.engine import load_config
        from srsum.tokenization import Seq2SeqCollator, load_tokenizer, resolve_max_source_length

        config, reporter = self.config, self.reporter
        self.source = self.resume_from or config.model
        if self.resume_from is None and config.model_config is not None:  # a new model from --config
            tokenizer_source = config.tokenizer or config_file(config.model_config).parent
            if config.tokenizer is None and not any((tokenizer_source / name).is_file() for name in TOKENIZER_FILES):
                raise SrsumError("--config needs --tokenizer (a folder with tokenizer files) unless the config's "
                                 "folder holds them")
            self.scratch = tempfile.TemporaryDirectory(prefix="srsum-new-model-")
            self.source = new_model_folder(config.model_config, load_tokenizer(tokenizer_source),
                                           Path(self.scratch.name), config.seed)
        source_config = load_config(str(self.source))  # one-line errors for a folder that is not a model
        self.source_type = getattr(source_config, "model_type", None)
        tokenizer_source = self.resume_from or config.tokenizer or self.source
        self.tokenizer = load_tokenizer(tokenizer_source)
        resolve_max_source_length(SimpleNamespace(config=source_config), config.max_source_length)
        train_examples = load_split(config, config.train_split, config.train_limit, "training")
        self.data = data_fingerprint(config.dataset, config.train_split, len(train_examples))
        if self.resume_from is not None:  # before the model is loaded: a refusal costs little
            self._check_data(read_trainer_state(self.resume_from).get("data"))
        self.eval_examples = (load_split(config, config.validation_split, config.eval_samples, "validation")
                              if config.eval_samples > 0 else [])
        self.train_rows = tokenize_split(self.tokenizer, source_config, train_examples, config, reporter, "training")
        self.eval_rows = (tokenize_split(self.tokenizer, source_config, self.eval_examples, config, reporter,
                                         "validation") if self.eval_examples else [])
        self.collator = Seq2SeqCollator(self.tokenizer.pad_token_id)
        # the first two global batches (epoch 0's order; all processes, all accumulated micro-batches), at most
        # MEMORY_EXAMPLES examples: calibrates a new run's W and is where memory is measured without validation
        global_batch = config.batch_size * self.processes * config.gradient_accumulation_steps
        first = self.epoch_order(0)[:min(2 * global_batch, MEMORY_EXAMPLES)]
        self.train_batch = self.collator([self.train_rows[i] for i in first])
        self.eval_batch = self.collator(self.eval_rows[:MEMORY_EXAMPLES]) if self.eval_rows else None

    def epoch_order(self, epoch: int) -> list[int]:
        return epoch_order(len(self.train_rows), self.config.seed, epoch)

    def _load_model(self) -> None:
        import torch

        from srsum.engine import load_model

        config = self.config
        try:
            if self.resume_from is not None:
                model = load_model(str(self.resume_from), dtype=torch.float32)
            else:  # a plain model is converted (and calibrated on its first training batches) on its device;
                # an srsum checkpoint as the start of a new run loads as saved (the conversion settings unused)
                model = load_model(str(self.source), attention=config.attention, seg_size=config.seg_size,
                                   dtype=torch.float32, device=self.accelerator.device,
                                   schedule_length=config.schedule_length, calibration_batch=self.train_batch,
                                   **config.engine_settings())
        except SrsumError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise SrsumError(f"model: cannot load {str(self.source)!r} as an srsum checkpoint or a T5/BART model "
                             f"({reason})") from None
        self.model_type = model.config.model_type
        converted_here = self.resume_from is None and self.source_type is not None \
            and not self.source_type.startswith("srformer_")
        if converted_here and config.transfer_steps:
            self.transfer = self._transfer(model)
        if self.resume_from is None:  # record what the engine used
            config.w_init = model.config.srformer_w_init
            config.memory_ratio = model.config.srformer_memory_ratio
            config.clamp = clamp_to_text(model.config.srformer_clamp)
        self.model = model

    def _transfer(self, model) -> dict[str, Any]:
        """Attention transfer of the newly converted model on the first training batches (epoch 0's order)."""
        from srsum.engine.transfer import memory_parameters, transfer_attention

        config = self.config
        if not memory_parameters(model):
            raise SrsumError(f"--transfer-steps: {config.attention or DEFAULT_ATTENTION} cross-attention has no "
                             "memory to transfer to")
        order = self.epoch_order(0)
        batches = [self.collator([self.train_rows[i] for i in order[start:start + config.batch_size]])
                   for start in range(0, min(len(order), config.transfer_steps * config.batch_size), config.batch_size)]
        with self.reporter.progress("attention transfer", config.transfer_steps) as advance:
            result = transfer_attention(model, batches, config.transfer_steps, eval_batches=[self.train_batch],
                                        max_new_tokens=config.max_target_length, advance=advance)
        for layer, (before, after) in enumerate(zip(result.layer_error_before, result.layer_error_after)):
            self.reporter.info(f"attention transfer: layer {layer} relative error {before:.3f} -> {after:.3f}")
        return result.summary()

    def _build_optimizer(self) -> None:
        import torch
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        self.steps_per_epoch = steps_per_epoch(len(self.train_rows), config.batch_size, self.processes,
                                               config.gradient_accumulation_steps)
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.model.train()
        optimizer = torch.optim.AdamW(_parameter_groups(self.model, config.weight_decay), lr=config.learning_rate)
        # stepped once per optimizer step by this loop (not by accelerate, which would step it once per process)
        self.scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, self.total_steps)
        if self.resume_from is not None:
            optimizer.load_state_dict(load_torch_file(self.resume_from / "optimizer.pt"))
            self.scheduler.load_state_dict(load_torch_file(self.resume_from / "scheduler.pt"))
        self.optimizer = optimizer

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _read_state(self) -> None:
        """A resumed run's step, best score, log and this process's RNG state (set once the model is prepared)."""
        self.saved_rng = None
        if self.resume_from is None:
            return
        state = read_trainer_state(self.resume_from)
        saved_processes = int(state.get("num_processes", 1))
        if saved_processes > 1 and "global_batch_size" not in state:
            raise SrsumError(f"--resume: {self.resume_from} was written by an older srsum under {saved_processes} "
                             "processes (another data split, and a schedule stepped once per process), which cannot "
                             "be continued; start a new run from it with --model "
                             f"{self.resume_from} and another --output-dir")
        if saved_processes != self.processes:
            raise SrsumError(f"--resume: {self.resume_from} was trained on {saved_processes} process"
                             f"{'es' if saved_processes > 1 else ''}, this run has {self.processes}; launch it with "
                             f"{saved_processes} (the data order of a step depends on the number of processes)")
        self.saved_rng = read_rng_state(self.resume_from, self.accelerator.process_index)
        if self.saved_rng is None:
            self.reporter.warn(f"{self.resume_from} has no random state for this process (an older srsum wrote a "
                               "pickled rng.pt, which is never loaded): the random state starts afresh")
        self.global_step = int(state.get("global_step", 0))
        self.best = state.get("best")
        self.log_history = list(state.get("log_history", []))
        self.last_metrics = dict(state.get("metrics", {}))
        self.skipped_steps = list(state.get("skipped_nonfinite_steps", []))

    def _check_data(self, saved: dict[str, Any] | None) -> None:
        """SrsumError when the training data differs from the one the checkpoint recorded (a warning with
        --allow-data-change)."""
        name = self.resume_from.name
        if not isinstance(saved, dict):
            self.reporter.warn(f"{self.resume_from} records no fingerprint of its training data (an older srsum): "
                               "whether the data changed since cannot be checked")
            return
        change = describe_change(saved, self.data)
        if change is None:
            return
        if not self.config.allow_data_change:
            raise SrsumError(f"--resume: the training data changed since {name}: {change}; restore the data the run "
                             "was trained on, or pass --allow-data-change to go on with the new data")
        self.reporter.warn(f"the training data changed since {name}: {change}; going on with it as "
                           "--allow-data-change asks (the result will differ from an uninterrupted run)")

    def _announce(self) -> None:
        config = self.config
        if self.resume_from is not None:
            self.reporter.info(f"resuming {self.run_dir} from {self.resume_from.name} (step {self.global_step} of "
                               f"{self.total_steps})")
            self.memory(self.train_batch, f"at step {self.global_step}", " (resumed)")
            return
        origin = (f"a new {self.model_type.removeprefix('srformer_')} from {config.model_config}"
                  if config.model_config else config.model)
        self.reporter.info(f"training {origin} with {config.attention} cross-attention (seg size "
                           f"{config.seg_size}, G {config.schedule_length}) into {self.run_dir}: {self.total_steps} "
                           "steps")
        calibration = getattr(self.unwrapped.config, "srformer_calibration", None)
        start = self.memory(self.train_batch, "at start",
                            f" (W calibrated to ratio {calibration['memory_ratio']:g} on {calibration['examples']} "
                            "training examples)" if calibration else "")
        if start:
            self.log_history.append({"step": 0, "memory": start})
        if self.transfer is not None:
            self.log_history.append({"step": 0, "transfer": self.transfer})

    # ---- the loop

    def train(self, stop_after_steps: int | None, on_step: Callable[[int], None] | None) -> TrainResult:
        try:
            with self.reporter.progress("training", self.total_steps, completed=self.global_step) as advance:
                self.advance = advance
                epoch = self.global_step // self.steps_per_epoch
                while self.global_step < self.total_steps:
                    self.epoch(epoch, stop_after_steps, on_step)
                    epoch += 1
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.global_step, self.run_dir, last_checkpoint(self.run_dir)) from None
        finally:
            if self.scratch is not None:
                self.scratch.cleanup()
        self.accelerator.wait_for_everyone()
        return TrainResult(self.run_dir, self.checkpoint, self.global_step, self.total_steps, self.best,
                           self.last_metrics, self.resume_from, self.main)

    def epoch(self, epoch: int, stop_after_steps: int | None, on_step: Callable[[int], None] | None) -> None:
        """The rest of ``epoch`` (all of it unless resuming in its middle), or until the last step."""
        parts = micro_batches(self.epoch_order(epoch), self.config.batch_size, self.processes,
                              self.accelerator.process_index)
        groups = step_groups(parts, self.config.gradient_accumulation_steps)
        for group in groups[self.global_step - epoch * self.steps_per_epoch:]:
            self.step(group)
            self._after_step()
            if on_step is not None:
                on_step(self.global_step)
            if stop_after_steps is not None and self.global_step >= stop_after_steps:
                raise KeyboardInterrupt
            if self.global_step >= self.total_steps:
                break

    def step(self, group: list[list[int]]) -> None:
        """One optimizer step over this process's rows of ``group`` (its micro-batches): the gradient of the mean
        loss over every label token of the step, on all processes together (see :mod:`srsum.training.batches`)."""
        from contextlib import nullcontext

        accelerator, model = self.accelerator, self.model
        device = accelerator.device
        batches = [self.collator([self.train_rows[i] for i in rows]) if rows else None for rows in group]
        tokens = sum(label_tokens(batch) for batch in batches if batch is not None)
        all_tokens = reduce_sums([tokens], accelerator)[0]
        scale = self.processes / max(all_tokens, 1.0)
        total = 0.0
        for index, batch in enumerate(batches):
            empty = batch is None  # the end of an epoch left this process no rows: a zero-weight pass keeps the
            if empty:              # processes in step (every process must run backward to synchronise)
                batch = self.collator([self.train_rows[0]])
            batch = {key: value.to(device) for key, value in batch.items()}
            last = index == len(batches) - 1
            with nullcontext() if last or self.processes == 1 else accelerator.no_sync(model):
                summed = loss_sum(model, batch)
                accelerator.backward(summed * (0.0 if empty else scale))
            total += 0.0 if empty else float(summed.detach())
        norm = self._gradient_norm()
        loss = reduce_sums([total], accelerator)[0] / max(all_tokens, 1.0)  # the same on every process, as the norm
        if math.isfinite(loss) and math.isfinite(norm):
            self.optimizer.step()
            self.scheduler.step()
            self.running_loss += loss
            self.running_count += 1
        else:
            self._non_finite(f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}")
        self.optimizer.zero_grad()
        self.window_tokens += all_tokens
        self.global_step += 1

    def _gradient_norm(self) -> float:
        """The gradients' total norm (inf or nan when one of them is not finite), after clipping them to
        --max-grad-norm when it is set."""
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else math.inf
        return float(self.accelerator.clip_grad_norm_(self.model.parameters(), limit))

    def _non_finite(self, what: str) -> None:
        """A step with a non-finite loss or gradients: skip its batch (no update) while --skip-nonfinite allows,
        with a warning; else stop the run."""
        step, limit = self.global_step + 1, self.config.skip_nonfinite
        if self.skipped_now >= limit:
            self._stop(step, what, f" (--skip-nonfinite {limit}: all {limit} skips used)" if limit else "")
        self.skipped_now += 1
        self.skipped_steps.append(step)
        merge_log(self.log_history, step, {"skipped": what})
        self.reporter.warn(f"step {step}: {what}; its batch is skipped, the weights are not updated "
                           f"({self.skipped_now} of --skip-nonfinite {limit})")

    def _stop(self, step: int, what: str, note: str = "") -> None:
        """Stop the run at ``step`` for ``what`` (a RuntimeFailure saying what is kept and what to try)."""
        kept = last_checkpoint(self.run_dir)
        skip = "skip up to N such batches (without an update) with --skip-nonfinite N"
        where = (f"the last good checkpoint is {kept}. Lower --learning-rate (now {self.config.learning_rate:g}) in a "
                 f"new run, or {skip}: `srsum train --resume --output-dir {self.run_dir} --skip-nonfinite N`"
                 if kept is not None else f"no checkpoint was written. Lower --learning-rate (now "
                 f"{self.config.learning_rate:g}), or {skip}")
        raise RuntimeFailure(f"step {step}: {what}{note}; training stopped, nothing of this step was saved; {where}")

    def _finite_weights(self) -> bool:
        import torch

        return bool(torch.stack([torch.isfinite(p).all() for p in self.unwrapped.parameters()]).all())

    def _memory_note(self) -> str:
        """The last measured memory ratio (mean over layers), for the plain log line; empty before one."""
        rows = self.last_metrics.get("memory")
        ratios = [row["ratio"] for row in rows or [] if isinstance(row, dict) and row.get("ratio") is not None]
        return f", memory ratio {sum(ratios) / len(ratios):.3g}" if ratios else ""

    def _after_step(self) -> None:
        """Log the loss; at the end of an epoch validate (or report the memory); save when due."""
        config, step = self.config, self.global_step
        mean_loss = self.running_loss / self.running_count if self.running_count else None  # None: all skipped
        self.advance(1, **({} if mean_loss is None else {"loss": mean_loss}))
        if step % config.logging_steps == 0 or step == self.total_steps:
            learning_rate = self.scheduler.get_last_lr()[0]
            now = time.perf_counter()
            tokens_per_second = self.window_tokens / max(now - self.window_start, 1e-9)
            merge_log(self.log_history, step, {"loss": None if mean_loss is None else round(mean_loss, 5),
                                               "learning_rate": learning_rate,
                                               "target_tokens_per_second": round(tokens_per_second, 1)})
            if self.log_lines:
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                shown = "skipped" if mean_loss is None else f"{mean_loss:.4f}"
                self.reporter.info(f"{stamp} step {step}/{self.total_steps}: loss {shown}, learning rate "
                                   f"{learning_rate:.3g}, {tokens_per_second:,.0f} target tokens/s"
                                   + self._memory_note())
            self.running_loss, self.running_count = 0.0, 0
            self.window_tokens, self.window_start = 0.0, now
        end_of_epoch = step % self.steps_per_epoch == 0 or step == self.total_steps
        due = config.save_steps is not None and step % config.save_steps == 0
        if (end_of_epoch or due) and not self._finite_weights():
            self._stop(step, "the weights are no longer finite")
        improved = False
        if end_of_epoch and not self.eval_rows:
            rows = self.memory(self.train_batch, f"after step {step}")
            if rows:
                self.last_metrics = {"step": step, "epoch": self.epoch_of(step), "memory": rows}
                merge_log(self.log_history, step, {"memory": rows})
        if end_of_epoch and self.eval_rows:
            improved = self.evaluate()
        if end_of_epoch or due:
            self.checkpoint = self.save(improved)

    def epoch_of(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    # ---- evaluation and the memory report

    def evaluate(self) -> bool:
        """Validation loss and ROUGE (and the memory on the validation rows); True when the best improved."""
        from accelerate.utils import broadcast_object_list

        step = self.global_step
        metrics = validation(self.unwrapped, self.tokenizer, self.eval_rows, self.eval_examples, self.config,
                             self.accelerator, self.reporter)  # sharded over the processes, gathered on each
        metrics = {key: round(value, 4) for key, value in metrics.items()}
        if self.processes > 1:  # the main process's numbers decide (the same, up to float reduction order)
            holder = [metrics]
            broadcast_object_list(holder)
            metrics = holder[0]
        self.last_metrics = {"step": step, "epoch": self.epoch_of(step), **metrics}
        entry = {"step": step, **{f"eval_{k}": v for k, v in metrics.items()}}
        self.reporter.metrics(f"validation after step {step}", metrics)
        rows = self.memory(self.eval_batch, f"after step {step}", " (validation)")
        if rows:
            self.last_metrics["memory"] = entry["memory"] = rows
        self.log_history.append(entry)
        value = metrics[self.config.best_metric]
        if not is_better(self.config.best_metric, value, self.best):
            return False
        self.best = {"metric": self.config.best_metric, "value": value, "step": step}
        return True

    def memory(self, batch, when: str, note: str = "") -> list[dict[str, Any]]:
        """The memory report on ``batch`` (main process; [] without a recurrent term), printed; dead layers and a
        saturating products' clamp warned about once a run each."""
        from srsum.engine.calibration import DEAD_RATIO, dead_layers, memory_report

        if not self.main:
            return []
        rows = memory_rows(memory_report(self.unwrapped, batch))
        if rows:
            self.reporter.info(memory_line(when + note, rows))
            dead = dead_layers(rows)
            if dead and not self.dead_warned:
                self.dead_warned = True
                self.reporter.warn(f"memory {when}: decoder layer{'s' if len(dead) > 1 else ''} "
                                   f"{', '.join(map(str, dead))} pass{'' if len(dead) > 1 else 'es'} nothing on (the "
                                   f"recurrent term is below {DEAD_RATIO:g} of the local one, or no RAF entry "
                                   "fires)")
            saturated = clamp_warning(when, rows, self.unwrapped.config.srformer_clamp)
            if saturated and not self.clamp_warned:
                self.clamp_warned = True
                self.reporter.warn(saturated)
        return rows

    # ---- checkpoints

    def trainer_state(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step, "epoch": self.epoch_of(self.global_step),
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            "num_train_examples": len(self.train_rows), "num_eval_examples": len(self.eval_rows),
            "num_processes": self.processes,
            "global_batch_size": self.config.batch_size * self.processes * self.config.gradient_accumulation_steps,
            "metrics": self.last_metrics, "best": self.best,
            "log_history": self.log_history, "args": asdict(self.config), "data": self.data,
            "skipped_nonfinite_steps": self.skipped_steps,
            "srformer": {k: v for k, v in self.unwrapped.config.to_dict().items() if k.startswith("srformer_")},
            "model_type": self.model_type, "srsum_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def save(self, with_best: bool) -> Path:
        """checkpoint-<step>/ (and best/ when ``with_best``), written by the main process."""
        self.accelerator.wait_for_everyone()
        folder = self.run_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        rngs = gather_shards([rng_state()], self.accelerator)  # each process's, in rank order
        if self.main:
            recover_run_dir(self.run_dir)
            current = self.trainer_state()
            if with_best:
                save_checkpoint(self.run_dir / BEST, self.unwrapped, self.tokenizer, current)
            save_checkpoint(folder, self.unwrapped, self.tokenizer, current, self.optimizer, self.scheduler, rngs)
            prune_checkpoints(self.run_dir, self.config.save_total_limit)
        self.accelerator.wait_for_everyone()
        return folder
