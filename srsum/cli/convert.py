"""``srsum convert``: a pretrained T5/BART summarizer becomes an SRformer checkpoint, without fine-tuning."""

from __future__ import annotations

from typing import Optional

import typer

from srsum.cli.common import QuietOption, RichReporter, app, emit_json, handled

CONVERT_EPILOG = """[bold]Examples[/bold]

  srsum convert t5-small --seg-size 64 --data articles.jsonl --transfer-steps 200 --output models/t5-small-sr64

  srsum convert facebook/bart-large-cnn --seg-size 16 --data cnn_dailymail --limit 200 --transfer-steps 300 --output models/bart-sr16

  srsum convert ./my-bart --attention segmented --seg-size 64 --output models/my-bart-seg64

  srsum convert --preset bart-base --data articles.jsonl --transfer-steps 200 --output models/bart-base-sr64
"""


@app.command(epilog=CONVERT_EPILOG)
def convert(
    model: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Pretrained T5/BART (Hub name or local "
                                          "folder); default: the --preset's model."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A preset of models/presets (srsum presets lists "
                                         "them): its model, variant, --seg-size, G, --memory-ratio and --clamp, each "
                                         "unless given."),
    output: str = typer.Option(..., "--output", "-o", help="Folder the SRformer checkpoint is written to "
                               "(atomically: model, tokenizer, transfer.json)."),
    attention: Optional[str] = typer.Option(None, "--attention", help="srformer (default), segmented, full or an "
                                            "ablation."),
    seg_size: Optional[int] = typer.Option(None, "--seg-size", help="Segment size s (default 64)."),
    schedule_length: Optional[int] = typer.Option(None, "--schedule-length", help="Segment schedule length G "
                                                  "(default: --max-target-length)."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Articles to calibrate W on and to transfer on: a "
                                       "local .jsonl/.json/.csv/.parquet file or folder of .txt files, or a dataset "
                                       "name (cnn_dailymail, xsum, ...). Reference summaries are used where present, "
                                       "else the full model's own greedy summaries."),
    split: str = typer.Option("all", "--split", help="Rows of --data to use (local files: the 'split' field; "
                              "'all' keeps every row; Hub datasets: e.g. train)."),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    summary_column: Optional[str] = typer.Option(None, "--summary-column"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N articles of --data."),
    transfer_steps: int = typer.Option(0, "--transfer-steps", help="Attention-transfer steps: train only W, λ, θ so "
                                       "each layer reproduces the full cross-attention (0: calibration only)."),
    transfer_lr: Optional[float] = typer.Option(None, "--transfer-lr", help="Relative learning rate of the "
                                                "transfer (default 0.01: each parameter moves ~1% of its size "
                                                "per step)."),
    no_labels: bool = typer.Option(False, "--no-labels", help="Ignore reference summaries: transfer on the full "
                                   "model's greedy summaries only."),
    clamp: Optional[str] = typer.Option(None, "--clamp", help="Clamp of the memory's key-value products: off "
                                        "(default) or a positive bound (the paper's BART used 2)."),
    memory_ratio: Optional[float] = typer.Option(None, "--memory-ratio", help="Recurrent/local ratio W is "
                                                 "calibrated to (default 0.05)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_source_length: int = typer.Option(1024, "--max-source-length", help="Articles are truncated to this many "
                                          "tokens."),
    max_target_length: int = typer.Option(128, "--max-target-length", help="Summary tokens per article in the "
                                          "transfer."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = QuietOption,
) -> None:
    """Convert a pretrained T5 or BART to SRformer cross-attention, without fine-tuning.

    W is calibrated on the first batch of --data, then --transfer-steps of attention transfer teach W, λ and θ alone to reproduce the original cross-attention on the articles of --data (the rest of the model is unchanged). The per-layer relative error of each cross-attention output against the full one is printed before and after, and saved as transfer.json beside the model.
    """
    from srsum.conversion import ConvertSettings, convert_model
    from srsum.engine.settings import clamp_from_text
    from srsum.errors import UsageError
    from srsum.presets import load_preset

    reporter = RichReporter(quiet)
    with handled(reporter):
        if preset is not None:
            filled = load_preset(preset).fill(model=model, attention=attention, seg_size=seg_size,
                                              schedule_length=schedule_length, memory_ratio=memory_ratio, clamp=clamp)
            model, attention, seg_size, clamp = filled["model"], filled["attention"], filled["seg_size"], filled["clamp"]
            schedule_length, memory_ratio = filled["schedule_length"], filled["memory_ratio"]
        if model is None:
            raise UsageError("MODEL or --preset required, e.g. srsum convert t5-small --output models/t5-small-sr64")
        settings = ConvertSettings(
            model=model, output=output, attention=attention or "srformer",
            seg_size=64 if seg_size is None else seg_size,
            schedule_length=schedule_length,
            clamp=None if clamp is None else clamp_from_text(clamp), memory_ratio=memory_ratio, data=data,
            split=split, text_column=text_column, summary_column=summary_column, limit=limit,
            transfer_steps=transfer_steps, transfer_lr=transfer_lr, batch_size=batch_size,
            max_source_length=max_source_length, max_target_length=max_target_length, use_labels=not no_labels,
            seed=seed)
        result = convert_model(settings, reporter)
        if as_json:
            emit_json(result.to_dict())
            return
        if result.transfer:
            moved = result.transfer
            for layer, (before, after) in enumerate(zip(moved["layer_error_before"], moved["layer_error_after"])):
                reporter.info(f"layer {layer}: relative error {before:.3f} -> {after:.3f}")
            reporter.info(f"attention transfer: {moved['steps']} steps on {moved['examples']} articles "
                          f"({moved['decoder_inputs']}), {moved['seconds']:.0f} s")
        reporter.info(f"wrote {result.output} ({result.attention}, seg size {result.seg_size})")
