"""``srsum train``: fine-tune a T5/BART converted to SRformer."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Optional

import typer

from srsum.cli.common import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RUNTIME, QuietOption, RichReporter, app, emit_json,
                              handled)
from srsum.errors import RuntimeFailure, SrsumError, UsageError

TRAIN_EPILOG = """[bold]Examples[/bold]

  srsum train --dataset cnn_dailymail                       [dim]# t5-small, SRformer, s 64: the paper's setting[/dim]

  srsum train --preset bart-base --dataset xsum --seg-size 16

  srsum train --model t5-small --dataset cnn_dailymail --seg-size 64 --epochs 25

  srsum train --model facebook/bart-base --dataset xsum --attention segmented --bf16

  accelerate launch -m srsum.cli train --model t5-small --dataset arxiv --batch-size 4

  torchrun --nproc_per_node 2 -m srsum.cli train --model t5-small --dataset xsum --cpu

  srsum train --resume --output-dir models/t5-small-srformer-seg64-20250101-120000

  srsum train --model ./tiny-t5 --dataset data.jsonl --train-split all --validation-split all --max-steps 10

  srsum train --config my-t5/config.json --tokenizer my-t5/ --dataset data.jsonl --train-split all --epochs 1
"""

def _launch_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 without a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class _OtherProcessReporter(RichReporter):
    """The reporter of the non-main processes of a launch: silent (the main process prints, once)."""

    def __init__(self):
        super().__init__(quiet=True)

    def warn(self, message: str) -> None:
        pass


@contextmanager
def _silent_errors_off_main(rank: int):
    """On a non-main process, end with the exit code of an error or interruption but leave the message to the main
    process (the training library raises the same SrsumError on every process); bugs keep their traceback."""
    from srsum.training import TrainingInterrupted

    if rank == 0:
        yield
        return
    try:
        yield
    except RuntimeFailure:
        raise typer.Exit(EXIT_RUNTIME) from None
    except SrsumError:
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except (TrainingInterrupted, KeyboardInterrupt):
        raise typer.Exit(EXIT_INTERRUPTED) from None


TRAINING_PANEL = "Training"
DATA_PANEL = "Data"
SAVE_PANEL = "Checkpoints"


@app.command(epilog=TRAIN_EPILOG)
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Pretrained T5/BART (Hub name such as t5-small or "
                                        "facebook/bart-base, or a local folder) or an srsum checkpoint."),
    model_config: Optional[str] = typer.Option(None, "--config", help="Instead of --model: train a new, randomly "
                                               "initialised T5/BART built from this config.json (or its folder), "
                                               "offline."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the model's; "
                                            "needed with --config unless its folder holds one)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cnn_dailymail, xsum, arxiv, mediasum, a Hub "
                                          "dataset name (owner/name[:config]), or a local .jsonl/.json/.csv/.parquet "
                                          "file or folder of .txt files.", rich_help_panel=DATA_PANEL),
    preset: Optional[str] = typer.Option(None, "--preset", help="Start from a preset of models/presets (srsum presets "
                                         "lists them): its model, variant, --seg-size, G, --memory-ratio and --clamp, "
                                         "each unless given. Without --model: t5-small, the paper's setting."),
    attention: Optional[str] = typer.Option(None, "--attention", help="Cross-attention variant: srformer (default), "
                                            "full, segmented, no_local, no_norm, no_raf, full_product, xl, global."),
    seg_size: Optional[int] = typer.Option(None, "--seg-size", help="Segment size s (default 64)."),
    schedule_length: Optional[int] = typer.Option(None, "--schedule-length", help="Segment schedule length G "
                                                  "(default: --max-target-length)."),
    w_init: Optional[str] = typer.Option(None, "--w-init", help="How W starts in a new run: calibrated (default: "
                                         "scaled per layer so the memory term is --memory-ratio times the local "
                                         "term on the first training batches) or paper (the paper's init)."),
    memory_ratio: Optional[float] = typer.Option(None, "--memory-ratio", help="Recurrent/local output-norm ratio "
                                                 "the calibration aims for (default 0.05)."),
    clamp: Optional[str] = typer.Option(None, "--clamp", help="Clamp of the memory's key-value products in a new "
                                        "run: off, or a positive bound (default off; the paper's BART used 2). The memory line's clamp-saturated share near 1 means the clamp "
                                        "leaves the memory little: try off."),
    transfer_steps: int = typer.Option(0, "--transfer-steps", help="Before fine-tuning a newly converted model, "
                                       "train only W, λ, θ for N steps so each layer reproduces the full "
                                       "cross-attention (attention transfer; 0: off)."),
    train_split: str = typer.Option("train", "--train-split", help="Split to train on (local files: rows whose "
                                    "'split' field matches; 'all' keeps every row).", rich_help_panel=DATA_PANEL),
    validation_split: str = typer.Option("validation", "--validation-split", help="Split scored after each epoch.",
                                         rich_help_panel=DATA_PANEL),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Article column (default: the dataset's "
                                              "known column, else article/document/text/...).",
                                              rich_help_panel=DATA_PANEL),
    summary_column: Optional[str] = typer.Option(None, "--summary-column", help="Reference summary column "
                                                 "(default: summary/highlights/abstract/target).",
                                                 rich_help_panel=DATA_PANEL),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="Use only the first N training examples.",
                                              rich_help_panel=DATA_PANEL),
    eval_samples: int = typer.Option(100, "--eval-samples", help="Validation examples scored (loss and ROUGE) after "
                                     "each epoch; 0 turns validation off.", rich_help_panel=DATA_PANEL),
    max_source_length: int = typer.Option(1024, "--max-source-length", help="Articles are truncated to this many "
                                          "tokens.", rich_help_panel=DATA_PANEL),
    max_target_length: int = typer.Option(128, "--max-target-length", help="Reference summaries are truncated to "
                                          "this many tokens; also the validation summary length.",
                                          rich_help_panel=DATA_PANEL),
    epochs: int = typer.Option(3, "--epochs", rich_help_panel=TRAINING_PANEL),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps (overrides --epochs).",
                                            rich_help_panel=TRAINING_PANEL),
    batch_size: int = typer.Option(8, "--batch-size", help="Per process (the global batch is this times the "
                                   "processes times --gradient-accumulation-steps).", rich_help_panel=TRAINING_PANEL),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", rich_help_panel=TRAINING_PANEL),
    gradient_accumulation_steps: int = typer.Option(1, "--gradient-accumulation-steps",
                                                    rich_help_panel=TRAINING_PANEL),
    learning_rate: float = typer.Option(5e-5, "--learning-rate", "--lr", help="AdamW peak learning rate.",
                                        rich_help_panel=TRAINING_PANEL),
    weight_decay: float = typer.Option(0.0, "--weight-decay", rich_help_panel=TRAINING_PANEL),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="Linear warm-up, then linear decay to 0.",
                                     rich_help_panel=TRAINING_PANEL),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 mixed precision.", rich_help_panel=TRAINING_PANEL),
    cpu: bool = typer.Option(False, "--cpu", help="Train on the CPU even when a GPU is present.",
                             rich_help_panel=TRAINING_PANEL),
    seed: int = typer.Option(42, "--seed", rich_help_panel=TRAINING_PANEL),
    eval_num_beams: int = typer.Option(1, "--eval-num-beams", help="Beams for the validation summaries.",
                                       rich_help_panel=TRAINING_PANEL),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Run folder (default models/<run-name>/).",
                                             rich_help_panel=SAVE_PANEL),
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Default <model>-<attention>-seg<s>-<time>.",
                                           rich_help_panel=SAVE_PANEL),
    save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Also save every N steps (always after each "
                                             "epoch).", rich_help_panel=SAVE_PANEL),
    save_total_limit: int = typer.Option(2, "--save-total-limit", help="checkpoint-<step> folders kept (best/ is "
                                         "kept too).", rich_help_panel=SAVE_PANEL),
    best_metric: str = typer.Option("rougeLsum", "--best-metric", help="rougeLsum, rougeL, rouge1, rouge2 or loss.",
                                    rich_help_panel=SAVE_PANEL),
    resume: bool = typer.Option(False, "--resume", help="Continue the last complete checkpoint of --output-dir "
                                "(default: the newest run under models/) to the same total step count.",
                                rich_help_panel=SAVE_PANEL),
    allow_data_change: bool = typer.Option(False, "--allow-data-change", help="With --resume: go on (with a "
                                           "warning) when the training data changed since the checkpoint, instead "
                                           "of refusing.", rich_help_panel=SAVE_PANEL),
    skip_nonfinite: int = typer.Option(0, "--skip-nonfinite", help="Skip (with a warning, without an update) up to "
                                       "N batches whose loss or gradients are not finite; the next one stops the "
                                       "run. 0: the first one stops it.", rich_help_panel=TRAINING_PANEL),
    logging_steps: int = typer.Option(10, "--logging-steps", help="Record the mean loss every N steps (when stderr "
                                      "is not a terminal, also print it as a plain line).",
                                      rich_help_panel=SAVE_PANEL),
    as_json: bool = typer.Option(False, "--json", help="Print the result (run folder, steps, metrics) as JSON."),
    quiet: bool = QuietOption,
) -> None:
    """Fine-tune a pretrained T5 or BART with SRformer cross-attention.

    The model is converted to --attention with --seg-size, trained with AdamW and a linear schedule, scored on the validation split after every epoch, and saved atomically to --output-dir/checkpoint-STEP (model, tokenizer, optimizer, scheduler, RNG, trainer_state.json); best/ holds the best validation score. Ctrl-C stops cleanly and --resume continues. Under 'accelerate launch' or 'torchrun' it trains data-parallel: --batch-size is per process, the validation is shared out, only the main process writes.
    """
    from srsum.presets import DEFAULT_PRESET, load_preset
    from srsum.training import TrainingConfig
    from srsum.training import train as run_training

    rank = _launch_rank()
    reporter = RichReporter(quiet) if rank == 0 else _OtherProcessReporter()
    with handled(reporter), _silent_errors_off_main(rank):
        if not resume and dataset is None:
            raise UsageError("--dataset required, e.g. srsum train --dataset cnn_dailymail (or --resume to continue "
                             "a run)")
        if resume and preset is not None:
            raise UsageError("--preset starts a new run; --resume continues one with the settings it was started with")
        if not resume and preset is None and model is None and model_config is None:
            preset = DEFAULT_PRESET
            reporter.info(f"no --model: the paper's setting, preset {preset} (t5-small, SRformer, s 64); "
                          "srsum presets lists the others")
        if preset is not None:
            filled = load_preset(preset).fill(model=model, attention=attention, seg_size=seg_size,
                                              schedule_length=schedule_length, memory_ratio=memory_ratio, clamp=clamp)
            model = model if model_config else filled["model"]  # --config builds a new model: no preset model
            attention, seg_size, clamp = filled["attention"], filled["seg_size"], filled["clamp"]
            schedule_length, memory_ratio = filled["schedule_length"], filled["memory_ratio"]
        config = TrainingConfig(
            model=model or "", dataset=dataset or "", attention=attention, seg_size=seg_size,
            schedule_length=schedule_length, w_init=w_init, memory_ratio=memory_ratio, clamp=clamp,
            transfer_steps=transfer_steps,
            train_split=train_split, validation_split=validation_split,
            text_column=text_column, summary_column=summary_column, train_limit=train_limit,
            eval_samples=eval_samples, output_dir=output_dir, run_name=run_name, epochs=epochs, max_steps=max_steps,
            batch_size=batch_size, eval_batch_size=eval_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
            weight_decay=weight_decay, warmup_steps=warmup_steps, max_source_length=max_source_length,
            max_target_length=max_target_length, bf16=bf16, cpu=cpu, seed=seed, save_steps=save_steps,
            save_total_limit=save_total_limit, best_metric=best_metric, eval_num_beams=eval_num_beams,
            logging_steps=logging_steps, resume=resume, model_config=model_config, tokenizer=tokenizer,
            skip_nonfinite=skip_nonfinite, allow_data_change=allow_data_change)
        # not a terminal (a log file, a pipe): no progress bar is drawn, so print a loss line every --logging-steps
        result = run_training(config, reporter, log_lines=not reporter.console.is_terminal)
        if not result.main_process:
            return
        if as_json:
            emit_json(result.to_dict())
        else:
            reporter.info(f"done: step {result.global_step} of {result.total_steps}; last checkpoint "
                          f"{result.checkpoint}" + (f"; best {result.best['metric']} {result.best['value']} at step "
                                                    f"{result.best['step']}" if result.best else ""))
