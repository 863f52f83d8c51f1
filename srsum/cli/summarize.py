"""``srsum summarize``: summaries of files, folders, tables or stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from srsum.cli.common import (EXIT_BAD_INPUT, BatchSize, DeviceOption, DoSample, DtypeOption, EncoderBlockOption,
                              LengthPenalty, MaxLength, MaxSource, MinLength, ModelOption, NoRepeat, NumBeams,
                              QuietOption, RichReporter, Seed, StepOption, Temperature, ThreadsOption, TopK, TopP, app,
                              generation_settings, handled, print_error)
from srsum.errors import SrsumError, UsageError

SUMMARIZE_EPILOG = """[bold]Examples[/bold]

  srsum summarize article.txt                      [dim]# newest checkpoint under models/[/dim]

  cat article.txt | srsum summarize - --model t5-small

  srsum summarize docs/ --model models/run/best --output summaries.jsonl

  srsum summarize articles.jsonl --num-beams 4 --max-length 128 --json

  srsum summarize article.txt --do-sample --top-p 0.9 --temperature 0.8 --seed 7

  srsum summarize article.txt --stream             [dim]# the summary as it is written[/dim]
"""


@app.command(epilog=SUMMARIZE_EPILOG)
def summarize(
    files: list[str] = typer.Argument(..., metavar="FILE...", help="Text files, - for stdin, folders of .txt files, "
                                      "or .jsonl/.json/.csv/.parquet files (one article per row)."),
    model: Optional[str] = ModelOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write JSON Lines {id, summary} to this file "
                                          "(atomically) instead of printing."),
    num_beams: Optional[int] = NumBeams,
    max_length: Optional[int] = MaxLength,
    min_length: Optional[int] = MinLength,
    length_penalty: Optional[float] = LengthPenalty,
    no_repeat_ngram_size: Optional[int] = NoRepeat,
    do_sample: Optional[bool] = DoSample,
    temperature: Optional[float] = Temperature,
    top_k: Optional[int] = TopK,
    top_p: Optional[float] = TopP,
    seed: Optional[int] = Seed,
    batch_size: str = BatchSize,
    max_source_length: Optional[int] = MaxSource,
    step: str = StepOption,
    encoder_block: Optional[int] = EncoderBlockOption,
    device: Optional[str] = DeviceOption,
    dtype: str = DtypeOption,
    threads: Optional[int] = ThreadsOption,
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Article column of .jsonl/.json/.csv/"
                                              ".parquet inputs (default: article/document/text/...)."),
    skip_done: bool = typer.Option(False, "--skip-done", help="Keep the summaries already in --output (and in the "
                                   "journal a killed run left) and summarize only the other articles."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON Lines {id, summary} instead of plain text."),
    stream: bool = typer.Option(False, "--stream", help="Print one article's summary token by token as it is "
                                "written (greedy or sampling: --num-beams defaults to 1 here)."),
    quiet: bool = QuietOption,
) -> None:
    """Summarize articles with a trained checkpoint or a pretrained T5/BART model.

    Articles longer than the max source length are truncated with a warning. Summaries are printed as they are finished, or appended to a journal beside --output (written in input order at the end); Ctrl-C, or even a kill, keeps the finished ones, and --skip-done continues. A file that cannot be read is named on stderr and the others are still summarized (the exit code is then 2).
    """
    from srsum.data import collect_articles
    from srsum.summarize import InOrder, OutputFile, load_summarizer, summarize_examples, text_streamer
    from srsum.evaluation import is_main_process
    from srsum.training.distributed import launched_processes, process_group

    reporter = RichReporter(quiet or not is_main_process())  # under a launcher the first process reports for all
    with handled(reporter):
        if stream and (output is not None or as_json):
            raise UsageError("--stream prints plain text as it is written; it cannot go with --output or --json")
        if stream and launched_processes() > 1:
            raise UsageError("--stream prints one article from one process; run it without torchrun/accelerate")
        num_beams = 1 if stream and num_beams is None else num_beams
        settings = generation_settings(num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size,
                                       batch_size, max_source_length, step,
                                       do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                                       seed=seed)
        if skip_done and output is None:
            raise UsageError("--skip-done needs --output (the file whose summaries are kept)")
        if output is not None:
            from srsum.checkpoints import ensure_writable_dir

            if output.is_dir():
                raise SrsumError(f"--output {output} is a folder; give a file name such as summaries.jsonl")
            ensure_writable_dir(output.parent, "output folder")
        examples, failures = collect_articles(files, text_column=text_column)
        for failure in failures:
            print_error(failure.message)
        if not examples:
            raise typer.Exit(EXIT_BAD_INPUT)
        group = process_group(device)
        if group is not None:
            _summarize_launched(group, examples, output, skip_done, as_json, reporter, settings,
                                lambda: load_summarizer(model, str(group.device) if device in (None, "cuda") else device,
                                                        dtype, reporter=reporter, threads=threads,
                                                        encoder_block="default" if encoder_block is None
                                                        else encoder_block))
            if failures:
                raise typer.Exit(EXIT_BAD_INPUT)
            return
        target = OutputFile(output, skip_done) if output is not None else None
        try:
            todo = target.todo(examples) if target is not None else examples
            if len(todo) < len(examples):
                reporter.info(f"{len(examples) - len(todo)} of {len(examples)} articles already have a summary in "
                              f"{output}: skipped")
            if todo:
                summarizer = load_summarizer(model, device, dtype, reporter=reporter, threads=threads,
                                             encoder_block="default" if encoder_block is None else encoder_block)
                printer = _Printer(as_json, headers=len(todo) > 1)
                results = InOrder(todo, (lambda rows: None) if target is not None or stream else printer.print)
                streamer = text_streamer(summarizer.tokenizer) if stream else None

                def finished(index: int, summary: str) -> None:
                    results.add(index, summary)
                    if target is not None:
                        target.add({"id": todo[index].id, "summary": summary})

                try:
                    summarize_examples(summarizer, todo, settings, reporter, on_summary=finished, streamer=streamer)
                except KeyboardInterrupt:
                    if target is not None:
                        kept = target.finish(examples)
                        reporter.warn(f"interrupted: {output} holds the {kept} of {len(examples)} summaries finished")
                    else:
                        printer.print(results.rest())
                    raise
            if target is not None:
                kept = target.finish(examples)
                reporter.info(f"wrote {kept} summaries to {output}")
            if failures:
                print_error(f"{len(failures)} input(s) could not be summarized; the other {len(examples)} were")
                raise typer.Exit(EXIT_BAD_INPUT)
        finally:
            if target is not None:
                target.close()  # the lock released, a journal kept when the output was not written


def _summarize_launched(group, examples, output, skip_done, as_json, reporter, settings, load) -> None:
    """Under torchrun / accelerate launch: the main process locks --output and finds what is left to do, each
    process summarizes its contiguous share (journaling its own summaries), and the main process writes the
    output (or prints) in input order. The same summaries as one process, except when sampling."""
    from srsum.summarize import OutputFile, summarize_shared
    from srsum.training.distributed import agree, on_main

    rank = group.process_index
    target = agree(lambda: OutputFile(output, skip_done, rank) if output is not None else None, group)
    try:
        left = on_main(lambda: [example.id for example in (target.todo(examples) if target else examples)], group)
        left = set(left)
        todo = [example for example in examples if example.id in left]
        if len(todo) < len(examples):
            reporter.info(f"{len(examples) - len(todo)} of {len(examples)} articles already have a summary in "
                          f"{output}: skipped")
        summaries = []
        if todo:
            summarizer = agree(load, group)
            journal = (lambda index, summary: target.add({"id": todo[index].id, "summary": summary})) if target else None
            summaries = summarize_shared(summarizer, todo, settings, reporter, group, on_summary=journal)
        if not group.is_main_process:
            return
        rows = [{"id": example.id, "summary": summary} for example, summary in zip(todo, summaries)]
        if target is None:
            _Printer(as_json, headers=len(rows) > 1).print(rows)
            return
        target.done.update({row["id"]: row for row in rows})
        kept = target.finish(examples)
        reporter.info(f"wrote {kept} summaries to {output} ({group.num_processes} processes)")
    finally:
        if target is not None:
            target.close()


class _Printer:
    """Summaries on stdout as they are finished: plain text (``==> id <==`` headers when there are
    several) or JSON Lines."""

    def __init__(self, as_json: bool, headers: bool):
        self.as_json, self.headers = as_json, headers

    def print(self, rows: list[dict]) -> None:
        for row in rows:
            if self.as_json:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif self.headers:
                sys.stdout.write(f"==> {row['id']} <==\n{row['summary']}\n\n")
            else:
                sys.stdout.write(row["summary"] + "\n")
        sys.stdout.flush()
