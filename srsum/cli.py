"""The ``srsum`` command line: train, summarize, evaluate and profile.

Each command only parses options and calls a library function (:mod:`srsum.training`,
:mod:`srsum.summarize`, :mod:`srsum.cli_profile`). Bad input becomes one ``Error: ...`` line on
stderr and a non-zero exit code: 1 for bad input or an unusable file/model, 2 for a malformed
command line, 130 for Ctrl-C. Progress bars, warnings and notes go to stderr; summaries, tables and
``--json`` output go to stdout.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from srsum import __version__
from srsum.errors import SrsumError
from srsum.summarize import Reporter

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


try:  # typer >= 0.25 vendors click as typer._click; older releases use click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as _click_errors

_ABORTS = tuple({typer.Abort, getattr(_click_errors, "Abort", typer.Abort)})


class _OneLineErrors(TyperGroup):
    """Typer's group, but command-line mistakes are one ``Error:`` line instead of a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except _click_errors.UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":
                # no arguments: show the help (typer's rich help prints itself while the error is built)
                if error.format_message().strip():
                    sys.stdout.write(error.format_message().rstrip() + "\n")
                code = EXIT_USAGE
            else:
                command = error.ctx.command_path if error.ctx is not None else "srsum"
                _print_error(f"{error.format_message()} (see '{command} --help')")
                code = EXIT_USAGE
        except _click_errors.ClickException as error:
            _print_error(error.format_message())
            code = error.exit_code
        except _ABORTS:
            _print_error("interrupted")
            code = EXIT_INTERRUPTED
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="srsum",
    cls=_OneLineErrors,
    help="Summarize long documents with SRformer (segmented recurrent cross-attention) T5 and BART models.",
    epilog="Run 'srsum COMMAND --help' for a command's options and examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ---------------------------------------------------------------------------------------------
# output helpers


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _print_error(message: str) -> None:
    sys.stderr.write(f"Error: {_one_line(message)}\n")
    sys.stderr.flush()


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    _print_error(message)
    return typer.Exit(code)


class RichReporter(Reporter):
    """Rich progress bars and tables on stderr/stdout; warnings are single ``Warning:`` lines."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self._progress: Progress | None = None

    @contextmanager
    def progress(self, description: str, total: int | None, completed: int = 0) -> Iterator[Callable[..., None]]:
        if self.quiet:
            yield lambda n=1, **fields: None
            return
        owner = self._progress is None
        if owner:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=self.console)
            self._progress.start()
        progress = self._progress
        task = progress.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, **fields: Any) -> None:
            status = "  ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                               for key, value in fields.items())
            progress.update(task, advance=n, **({"status": status} if fields else {}))

        try:
            yield advance
        finally:
            if owner:
                progress.stop()
                self._progress = None
            else:
                progress.remove_task(task)

    def _print(self, text: str) -> None:
        target = self._progress.console if self._progress is not None else self.console
        target.print(_one_line(text), markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self._print(f"Warning: {message}")

    def info(self, message: str) -> None:
        if not self.quiet:
            self._print(message)

    def metrics(self, title: str, values: dict[str, float]) -> None:
        if not self.quiet:
            table = Table(title=escape(title), title_justify="left")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key, value in values.items():
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
            target = self._progress.console if self._progress is not None else self.console
            target.print(table)


@contextmanager
def _handled(reporter: RichReporter) -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes; show user warnings as one line."""
    from srsum.data import DataWarning
    from srsum.training import TrainingInterrupted

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UserWarning):  # DataWarning, the engine's M > G note, ...: one line each
                reporter.warn(str(message))
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        except SrsumError as error:
            raise _fail(str(error)) from None
        except TrainingInterrupted as error:
            raise _fail(str(error), EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", EXIT_INTERRUPTED) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise _fail(f"{where}{error.strerror or error}") from None


def _quiet_libraries() -> None:
    """Keep transformers/datasets/hub logs and tqdm bars out of the CLI's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging tweaks must never break the CLI
        pass
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except Exception:  # pragma: no cover
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except Exception:  # pragma: no cover
        pass


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"srsum {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Summarize long documents with SRformer (segmented recurrent cross-attention) T5 and BART models."""
    _quiet_libraries()


# ---------------------------------------------------------------------------------------------
# shared options

GENERATION_HELP = "Generation"


def _generation(num_beams: int, max_length: int, min_length: int, length_penalty: float, no_repeat_ngram_size: int,
                batch_size: int, max_source_length: Optional[int], step: str = "auto"):
    from srsum.summarize import SummarizeSettings

    return SummarizeSettings(num_beams=num_beams, max_length=max_length, min_length=min_length,
                              length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                              batch_size=batch_size, max_source_length=max_source_length, step=step).validate()


ModelOption = typer.Option(None, "--model", "-m", help="An srsum checkpoint folder, a T5/BART model folder or a Hub "
                           "name such as t5-small. Default: the newest checkpoint under models/.")
NumBeams = typer.Option(4, "--num-beams", help="Beam width (1: greedy).", rich_help_panel=GENERATION_HELP)
MaxLength = typer.Option(128, "--max-length", help="Most new tokens per summary.", rich_help_panel=GENERATION_HELP)
MinLength = typer.Option(0, "--min-length", help="Fewest new tokens per summary.", rich_help_panel=GENERATION_HELP)
LengthPenalty = typer.Option(1.0, "--length-penalty", help="Beam score length exponent (>1 favours longer).",
                             rich_help_panel=GENERATION_HELP)
NoRepeat = typer.Option(3, "--no-repeat-ngram-size", help="Never repeat an n-gram of this size (0: off).",
                        rich_help_panel=GENERATION_HELP)
BatchSize = typer.Option(8, "--batch-size", help="Articles generated together.", rich_help_panel=GENERATION_HELP)
MaxSource = typer.Option(None, "--max-source-length", help="Truncate articles to this many tokens (default: what "
                         "the checkpoint was trained with, else 1024).", rich_help_panel=GENERATION_HELP)
StepOption = typer.Option("auto", "--step", help="How each decoder step runs: eager; graph (captured once per "
                          "batch in a CUDA graph and replayed; CUDA only); compiled (torch.compile, one static "
                          "graph; the first batch of each shape pays the compile); auto (graph on CUDA, eager "
                          "elsewhere).", rich_help_panel=GENERATION_HELP)
DeviceOption = typer.Option(None, "--device", help="cpu, cuda, cuda:N, mps (default: cuda if available).")
DtypeOption = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16 (not for T5).")
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or notes (warnings and errors still show).")


# ---------------------------------------------------------------------------------------------
# summarize

SUMMARIZE_EPILOG = """[bold]Examples[/bold]

  srsum summarize article.txt                      [dim]# newest checkpoint under models/[/dim]

  cat article.txt | srsum summarize - --model t5-small

  srsum summarize docs/ --model models/run/best --output summaries.jsonl

  srsum summarize articles.jsonl --num-beams 4 --max-length 128 --json
"""


@app.command(epilog=SUMMARIZE_EPILOG)
def summarize(
    files: list[str] = typer.Argument(..., metavar="FILE...", help="Text files, - for stdin, folders of .txt files, "
                                      "or .jsonl/.json/.csv/.parquet files (one article per row)."),
    model: Optional[str] = ModelOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write JSON Lines {id, summary} to this file "
                                          "(atomically) instead of printing."),
    num_beams: int = NumBeams,
    max_length: int = MaxLength,
    min_length: int = MinLength,
    length_penalty: float = LengthPenalty,
    no_repeat_ngram_size: int = NoRepeat,
    batch_size: int = BatchSize,
    max_source_length: Optional[int] = MaxSource,
    step: str = StepOption,
    device: Optional[str] = DeviceOption,
    dtype: str = DtypeOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines {id, summary} instead of plain text."),
    quiet: bool = QuietOption,
) -> None:
    """Summarize articles with a trained checkpoint or a pretrained T5/BART model.

    Articles longer than the max source length are truncated with a warning. A file that cannot be read is named on stderr and the others are still summarized (the exit code is then 1).
    """
    from srsum.summarize import collect_articles, load_summarizer, summarize_examples, write_jsonl

    reporter = RichReporter(quiet)
    with _handled(reporter):
        settings = _generation(num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size, batch_size,
                               max_source_length, step)
        if output is not None:
            from srsum.checkpoints import ensure_writable_dir

            if output.is_dir():
                raise SrsumError(f"--output {output} is a folder; give a file name such as summaries.jsonl")
            ensure_writable_dir(output.parent, "output folder")
        examples, failures = collect_articles(files)
        for failure in failures:
            _print_error(failure.message)
        if not examples:
            raise typer.Exit(EXIT_BAD_INPUT)
        summarizer = load_summarizer(model, device, dtype, reporter=reporter)
        summaries = summarize_examples(summarizer, examples, settings, reporter)
        rows = [{"id": example.id, "summary": summary} for example, summary in zip(examples, summaries)]
        if output is not None:
            write_jsonl(output, rows)
            reporter.info(f"wrote {len(rows)} summaries to {output}")
        elif as_json:
            sys.stdout.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        else:
            for row in rows:
                if len(rows) > 1:
                    sys.stdout.write(f"==> {row['id']} <==\n")
                sys.stdout.write(row["summary"] + "\n")
                if len(rows) > 1:
                    sys.stdout.write("\n")
        if failures:
            _print_error(f"{len(failures)} input(s) could not be summarized; the other {len(rows)} were")
            raise typer.Exit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------------------------------
# evaluate

EVALUATE_EPILOG = """[bold]Examples[/bold]

  srsum evaluate --baseline lead-3 --dataset cnn_dailymail --split test --limit 1000

  srsum evaluate --model models/run/best --dataset xsum --num-beams 4

  srsum evaluate --baseline lead-3 --dataset ../shared/data/cnn_dailymail/cnn_dailymail-test-sample.jsonl

  srsum evaluate --model t5-small --dataset my.csv --text-column body --summary-column abstract --json
"""


def _rouge_table(metrics: dict[str, Any]) -> Table:
    who = metrics["baseline"] or metrics["model"]
    title = (f"ROUGE (F1, %) of {who} on {metrics['dataset']} (split {metrics['split']}, "
             f"{metrics['n_examples']} examples)")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("metric")
    table.add_column("score", justify="right")
    names = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
    for key, value in metrics["rouge"].items():
        table.add_row(names.get(key, key), f"{value:.2f}")
    return table


@app.command(epilog=EVALUATE_EPILOG)
def evaluate(
    dataset: str = typer.Option(..., "--dataset", "-d", help="cnn_dailymail, xsum, arxiv, mediasum, any Hugging Face "
                                "dataset name (owner/name[:config]), or a local .jsonl/.json/.csv/.parquet file or "
                                "folder of .txt files."),
    model: Optional[str] = ModelOption,
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Score an extractive baseline instead of a model: "
                                           "lead-3 (first three sentences)."),
    split: str = typer.Option("test", "--split", help="Dataset split (local files: rows whose 'split' field matches; "
                              "'all' keeps every row)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column with the article."),
    summary_column: Optional[str] = typer.Option(None, "--summary-column", help="Column with the reference summary."),
    limit: Optional[int] = typer.Option(None, "--limit", "--sample-size", "-n", help="Score only the first N examples."),
    num_beams: int = NumBeams,
    max_length: int = MaxLength,
    min_length: int = MinLength,
    length_penalty: float = LengthPenalty,
    no_repeat_ngram_size: int = NoRepeat,
    batch_size: int = BatchSize,
    max_source_length: Optional[int] = MaxSource,
    step: str = StepOption,
    device: Optional[str] = DeviceOption,
    dtype: str = DtypeOption,
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where predictions.jsonl and metrics.json go "
                                              "(default: evaluations/<model>-<dataset>-<split>/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON instead of a table."),
    quiet: bool = QuietOption,
) -> None:
    """ROUGE-1/2/L/Lsum of a model (or the lead-3 baseline) on a dataset.

    Scores match rouge-score called the way the Hugging Face summarization example calls it (stemming, one sentence per line for Lsum, bootstrap mid F1 with seed 42). Writes predictions.jsonl and metrics.json (every generation setting, model, dataset, split, example count, SRformer settings).
    """
    from srsum.summarize import default_eval_dir
    from srsum.summarize import evaluate as run_evaluation

    reporter = RichReporter(quiet)
    with _handled(reporter):
        settings = _generation(num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size, batch_size,
                               max_source_length, step)
        target = output_dir or default_eval_dir(model, baseline, dataset, split)
        metrics = run_evaluation(dataset, model=model, baseline=baseline, split=split, text_column=text_column,
                                 summary_column=summary_column, limit=limit, generation=settings, device=device,
                                 dtype=dtype, output_dir=target, reporter=reporter)
        if as_json:
            _emit_json(metrics)
        else:
            Console(soft_wrap=True).print(_rouge_table(metrics))
        reporter.info(f"wrote {metrics['predictions_file']} and {metrics['metrics_file']}")


# ---------------------------------------------------------------------------------------------
# train

TRAIN_EPILOG = """[bold]Examples[/bold]

  srsum train --model t5-small --dataset cnn_dailymail --seg-size 64 --epochs 25

  srsum train --model facebook/bart-base --dataset xsum --attention segmented --bf16

  accelerate launch -m srsum.cli train --model t5-small --dataset arxiv --batch-size 4

  srsum train --resume --output-dir models/t5-small-srformer-seg64-20250101-120000

  srsum train --model ./tiny-t5 --dataset data.jsonl --train-split all --validation-split all --max-steps 10
"""

TRAINING_PANEL = "Training"
DATA_PANEL = "Data"
SAVE_PANEL = "Checkpoints"


@app.command(epilog=TRAIN_EPILOG)
def train(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Pretrained T5/BART (Hub name such as t5-small or "
                                        "facebook/bart-base, or a local folder) or an srsum checkpoint."),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cnn_dailymail, xsum, arxiv, mediasum, a Hub "
                                          "dataset name (owner/name[:config]), or a local .jsonl/.json/.csv/.parquet "
                                          "file or folder of .txt files.", rich_help_panel=DATA_PANEL),
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
    batch_size: int = typer.Option(8, "--batch-size", help="Per device.", rich_help_panel=TRAINING_PANEL),
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
    logging_steps: int = typer.Option(10, "--logging-steps", rich_help_panel=SAVE_PANEL),
    as_json: bool = typer.Option(False, "--json", help="Print the result (run folder, steps, metrics) as JSON."),
    quiet: bool = QuietOption,
) -> None:
    """Fine-tune a pretrained T5 or BART with SRformer cross-attention.

    The model is converted to --attention with --seg-size, trained with AdamW and a linear schedule, scored on the validation split after every epoch, and saved atomically to --output-dir/checkpoint-STEP (model, tokenizer, optimizer, scheduler, RNG, trainer_state.json); best/ holds the best validation score. Ctrl-C stops cleanly and --resume continues. Runs unchanged under 'accelerate launch'.
    """
    from srsum.training import TrainingConfig
    from srsum.training import train as run_training

    reporter = RichReporter(quiet)
    with _handled(reporter):
        if not resume and (model is None or dataset is None):
            missing = " and ".join(name for name, value in (("--model", model), ("--dataset", dataset)) if value is None)
            raise SrsumError(f"{missing} required, e.g. srsum train --model t5-small --dataset cnn_dailymail "
                             "(or --resume to continue a run)")
        config = TrainingConfig(
            model=model or "", dataset=dataset or "", attention=attention, seg_size=seg_size,
            schedule_length=schedule_length, w_init=w_init, memory_ratio=memory_ratio, train_split=train_split,
            validation_split=validation_split,
            text_column=text_column, summary_column=summary_column, train_limit=train_limit,
            eval_samples=eval_samples, output_dir=output_dir, run_name=run_name, epochs=epochs, max_steps=max_steps,
            batch_size=batch_size, eval_batch_size=eval_batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps, learning_rate=learning_rate,
            weight_decay=weight_decay, warmup_steps=warmup_steps, max_source_length=max_source_length,
            max_target_length=max_target_length, bf16=bf16, cpu=cpu, seed=seed, save_steps=save_steps,
            save_total_limit=save_total_limit, best_metric=best_metric, eval_num_beams=eval_num_beams,
            logging_steps=logging_steps, resume=resume)
        result = run_training(config, reporter)
        if not result.main_process:
            return
        if as_json:
            _emit_json(result.to_dict())
        else:
            reporter.info(f"done: step {result.global_step} of {result.total_steps}; last checkpoint "
                          f"{result.checkpoint}" + (f"; best {result.best['metric']} {result.best['value']} at step "
                                                    f"{result.best['step']}" if result.best else ""))


# ---------------------------------------------------------------------------------------------
# profile (its own module; registered here)

try:
    from srsum.cli_profile import profile_command
except ImportError as _profile_import_error:  # pragma: no cover - only while that module is missing
    _PROFILE_ERROR = str(_profile_import_error)

    def profile_command() -> None:
        """Cross-attention cost of full, segmented and srformer attention (not available in this build)."""
        raise _fail(f"the profile command is not available ({_PROFILE_ERROR})")

app.command("profile", epilog="""[bold]Examples[/bold]

  srsum profile --n 1024 --m 128 --seg-size 64

  srsum profile --sweep --sweep-over m --output-dir profile/
""")(profile_command)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
