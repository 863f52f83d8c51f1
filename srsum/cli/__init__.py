"""The ``srsum`` command line: one module per command, each only parsing options, calling a library
function and printing. What they share (the app, errors and exit codes, the reporter, generation
options) is in :mod:`srsum.cli.common`.
"""

from __future__ import annotations

from srsum.cli.common import app
from srsum.cli import summarize, evaluate, train, convert, presets  # noqa: F401,I001  (each registers its command on app, in help order)
from srsum.cli.profile import profile_command

app.command("profile", epilog="""[bold]Examples[/bold]

  srsum profile --n 1024 --m 128 --seg-size 64

  srsum profile --sweep --sweep-over m --output-dir profile/
""")(profile_command)

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
