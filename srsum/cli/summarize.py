"""``srsum summarize``: summaries of files, folders, tables or stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from srsum.cli.common import (EXIT_BAD_INPUT, BatchSize, DeviceOption, DtypeOption, LengthPenalty, MaxLength,
                              MaxSource, MinLength, ModelOption, NoRepeat, NumBeams, QuietOption, RichReporter,
                              StepOption, app, generation_settings, handled, print_error)
from srsum.errors import SrsumError

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
    with handled(reporter):
        settings = generation_settings(num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size, batch_size,
                               max_source_length, step)
        if output is not None:
            from srsum.checkpoints import ensure_writable_dir

            if output.is_dir():
                raise SrsumError(f"--output {output} is a folder; give a file name such as summaries.jsonl")
            ensure_writable_dir(output.parent, "output folder")
        examples, failures = collect_articles(files)
        for failure in failures:
            print_error(failure.message)
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
            print_error(f"{len(failures)} input(s) could not be summarized; the other {len(rows)} were")
            raise typer.Exit(EXIT_BAD_INPUT)
