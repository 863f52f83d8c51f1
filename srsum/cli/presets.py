"""``srsum presets``: the model presets of models/presets, for ``srsum train/convert --preset NAME``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from srsum.cli.common import RichReporter, app, emit_json, handled


@app.command("presets")
def presets(as_json: bool = typer.Option(False, "--json", help="Print the presets as JSON.")) -> None:
    """List the model presets (models/presets/*.json) that srsum train and srsum convert take with --preset NAME."""
    from dataclasses import asdict

    from srsum.presets import DEFAULT_PRESET, PRESETS_DIR, list_presets

    with handled(RichReporter()):
        found = list_presets()
        if as_json:
            emit_json([asdict(p) for p in found])
            return
        table = Table(title=f"presets in {PRESETS_DIR} (default: {DEFAULT_PRESET})", title_justify="left")
        for column in ("name", "model", "attention", "s", "G", "ratio", "clamp"):
            table.add_column(column, no_wrap=True)
        for p in found:
            table.add_row(p.name, p.model, p.attention, str(p.seg_size), str(p.schedule_length), f"{p.memory_ratio:g}",
                          str(p.clamp))
        console = Console(highlight=False)
        console.print(table)
        for p in found:
            console.print(f"{p.name}: {p.description}", markup=False)
