"""``srsum evaluate``: ROUGE of a model or the lead-3 baseline on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from srsum.cli.common import (BatchSize, DeviceOption, DoSample, DtypeOption, EncoderBlockOption, LengthPenalty,
                              MaxLength, MaxSource, MinLength, ModelOption, NoRepeat, NumBeams, QuietOption,
                              RichReporter, Seed, StepOption, Temperature, ThreadsOption, TopK, TopP, app, emit_json,
                              generation_settings, handled)

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
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Where predictions.jsonl and metrics.json go "
                                              "(default: evaluations/<model>-<dataset>-<split>/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics JSON instead of a table."),
    quiet: bool = QuietOption,
) -> None:
    """ROUGE-1/2/L/Lsum of a model (or the lead-3 baseline) on a dataset.

    Scores match rouge-score called the way the Hugging Face summarization example calls it (stemming, one sentence per line for Lsum, bootstrap mid F1 with seed 42). Writes predictions.jsonl and metrics.json (every generation setting, model, dataset, split, example count, SRformer settings).
    """
    from srsum.evaluation import default_eval_dir, is_main_process
    from srsum.evaluation import evaluate as run_evaluation

    reporter = RichReporter(quiet)
    with handled(reporter):
        settings = generation_settings(num_beams, max_length, min_length, length_penalty, no_repeat_ngram_size, batch_size,
                               max_source_length, step,
                               do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed)
        target = output_dir or default_eval_dir(model, baseline, dataset, split)
        metrics = run_evaluation(dataset, model=model, baseline=baseline, split=split, text_column=text_column,
                                 summary_column=summary_column, limit=limit, generation=settings, device=device,
                                 dtype=dtype, threads=threads, output_dir=target, reporter=reporter,
                                 encoder_block="default" if encoder_block is None else encoder_block)
        if not is_main_process():
            return  # under a launcher the first process reports for all
        if as_json:
            emit_json(metrics)
        else:
            Console(soft_wrap=True).print(_rouge_table(metrics))
        reporter.info(f"wrote {metrics['predictions_file']} and {metrics['metrics_file']}")
