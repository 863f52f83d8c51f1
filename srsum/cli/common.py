"""What every srsum command shares: the Typer app, one-line errors and exit codes, the rich
reporter (progress bars, warnings, metrics tables on stderr) and the generation options.

Exit codes (docs/CLI.md has the table): 2 for bad input or usage (an unusable file, model or dataset, an
option that cannot work), 1 for a runtime failure (:class:`srsum.errors.RuntimeFailure`, an OS error),
130 for Ctrl-C. Nothing here imports torch or transformers, so ``srsum --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from srsum import __version__
from srsum.errors import RuntimeFailure, SrsumError
from srsum.reporting import Reporter

EXIT_RUNTIME = 1  # a runtime failure: the Hub cannot be reached, a full disk, ...
EXIT_BAD_INPUT = 2  # bad input or usage: an unusable file, model or dataset, a wrong option
EXIT_USAGE = EXIT_BAD_INPUT
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
                print_error(f"{error.format_message()} (see '{command} --help')")
                code = EXIT_USAGE
        except _click_errors.ClickException as error:
            print_error(error.format_message())
            code = error.exit_code
        except _ABORTS:
            print_error("interrupted")
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


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def print_error(message: str) -> None:
    sys.stderr.write(f"Error: {one_line(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    print_error(message)
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
        target.print(one_line(text), markup=False, highlight=False, soft_wrap=True)

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
def handled(reporter: RichReporter) -> Iterator[None]:
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
        except RuntimeFailure as error:
            raise fail(str(error), EXIT_RUNTIME) from None
        except SrsumError as error:  # UsageError included
            raise fail(str(error), EXIT_BAD_INPUT) from None
        except TrainingInterrupted as error:
            raise fail(str(error), EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise fail(f"{where}{error.strerror or error}", EXIT_RUNTIME) from None


# Set before transformers, datasets and huggingface_hub are imported (they read these once, at import), so
# quieting them costs no import: `srsum profile` never loads datasets. A user's own setting wins.
QUIET_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                     "DATASETS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                     "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def _quiet_libraries() -> None:
    """Keep transformers/datasets/hub logs and tqdm bars out of the CLI's output (libraries already imported,
    as in tests, are quieted directly)."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        if "transformers" in sys.modules:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
        if "datasets" in sys.modules:
            import datasets

            datasets.logging.set_verbosity_error()
            datasets.disable_progress_bars()
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
    except Exception:  # pragma: no cover - logging tweaks must never break the CLI
        pass


def emit_json(data: Any) -> None:
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


def generation_settings(num_beams: Optional[int], max_length: Optional[int], min_length: Optional[int],
                        length_penalty: Optional[float], no_repeat_ngram_size: Optional[int], batch_size: int | str,
                        max_source_length: Optional[int], step: str = "auto", *, do_sample: Optional[bool] = None,
                        temperature: Optional[float] = None, top_k: Optional[int] = None,
                        top_p: Optional[float] = None, seed: Optional[int] = None):
    """The generation options as SummarizeSettings; those not given stay None and take the model's defaults."""
    from srsum.batching import parse_batch_size
    from srsum.summarize import SummarizeSettings

    return SummarizeSettings(num_beams=num_beams, max_length=max_length, min_length=min_length,
                             length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                             batch_size=parse_batch_size(batch_size), max_source_length=max_source_length, step=step,
                             do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                             seed=seed).validate()


ModelOption = typer.Option(None, "--model", "-m", help="An srsum checkpoint folder, a T5/BART model folder or a Hub "
                           "name such as t5-small. Default: the newest checkpoint under models/.")
_MODEL_DEFAULT = "the model's own summarization setting, else"
NumBeams = typer.Option(None, "--num-beams", help=f"Beam width (1: greedy). Default: {_MODEL_DEFAULT} 4.",
                        rich_help_panel=GENERATION_HELP, show_default=False)
MaxLength = typer.Option(None, "--max-length", help=f"Most new tokens per summary. Default: {_MODEL_DEFAULT} 128.",
                         rich_help_panel=GENERATION_HELP, show_default=False)
MinLength = typer.Option(None, "--min-length", help=f"Fewest new tokens per summary. Default: {_MODEL_DEFAULT} 0.",
                         rich_help_panel=GENERATION_HELP, show_default=False)
LengthPenalty = typer.Option(None, "--length-penalty", help="Beam score length exponent (>1 favours longer). "
                             f"Default: {_MODEL_DEFAULT} 1.0.", rich_help_panel=GENERATION_HELP, show_default=False)
NoRepeat = typer.Option(None, "--no-repeat-ngram-size", help="Never repeat an n-gram of this size (0: off). "
                        f"Default: {_MODEL_DEFAULT} 3.", rich_help_panel=GENERATION_HELP, show_default=False)
DoSample = typer.Option(None, "--do-sample/--no-sample", help="Sample each next token from the (warped) "
                        "probabilities instead of taking the best; with --num-beams > 1, beam sampling (the "
                        f"beams' next candidates are drawn). Default: {_MODEL_DEFAULT} off.",
                        rich_help_panel=GENERATION_HELP, show_default=False)
Temperature = typer.Option(None, "--temperature", help="Sampling: divide the scores by this (> 0; below 1 "
                           "sharper, above 1 more random). Needs --do-sample. Default: 1.0.",
                           rich_help_panel=GENERATION_HELP, show_default=False)
TopK = typer.Option(None, "--top-k", help="Sampling: draw only from the K most likely tokens (0: off). Needs "
                    "--do-sample. Default: 50.", rich_help_panel=GENERATION_HELP, show_default=False)
TopP = typer.Option(None, "--top-p", help="Sampling: draw only from the fewest most likely tokens whose "
                    "probability reaches P (in (0, 1]; 1: off). Needs --do-sample. Default: 1.0.",
                    rich_help_panel=GENERATION_HELP, show_default=False)
Seed = typer.Option(None, "--seed", help="Sampling: the seed of the draws; the same seed, inputs and "
                    "--batch-size give the same summaries. Needs --do-sample. Default: a random seed, "
                    "reported (and recorded by evaluate).", rich_help_panel=GENERATION_HELP, show_default=False)
BatchSize = typer.Option("8", "--batch-size", help="Articles generated together, or auto: as many as half the memory "
                         "left holds at each batch's length (batches run longest first).",
                         rich_help_panel=GENERATION_HELP)
MaxSource = typer.Option(None, "--max-source-length", help="Truncate articles to this many tokens (default: what "
                         "the checkpoint was trained with, else 1024).", rich_help_panel=GENERATION_HELP)
StepOption = typer.Option("auto", "--step", help="How each decoder step runs: eager; graph (captured once per "
                          "batch in a CUDA graph and replayed; CUDA only); compiled (torch.compile, one static "
                          "graph; the first batch of each shape pays the compile); auto (graph on CUDA, eager "
                          "elsewhere).", rich_help_panel=GENERATION_HELP)
EncoderBlockOption = typer.Option(None, "--encoder-block", help="Encoder self-attention in blocks of this many "
                                  "queries (memory O(n x block) instead of O(n^2)); 0: off. Default: the "
                                  "checkpoint's srformer_encoder_block (512).", rich_help_panel=GENERATION_HELP,
                                  show_default=False)
DeviceOption = typer.Option(None, "--device", help="cpu, cuda, cuda:N, mps (default: cuda if available).")
DtypeOption = typer.Option("auto", "--dtype", help="auto (bfloat16 on a CPU with AMX or AVX512-BF16 and on a "
                           "GPU with bfloat16, else float32; the closing note says which), float32, bfloat16, "
                           "float16 (not for T5), or int8: float32 with the decode step's linear layers quantised "
                           "to int8 (CPU only).")
ThreadsOption = typer.Option(None, "--threads", help="CPU threads for the matrix products (default: one per "
                             "core; under torchrun/accelerate launch, this node's cores shared among its processes).",
                             show_default=False)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or notes (warnings and errors still show).")
