"""Run ``srsum profile`` without the installed console script: ``python benchmarks/profile_sweep.py [options]``.

Takes exactly the options of ``srsum profile`` (see ``--help``). Examples::

    python benchmarks/profile_sweep.py --seg-size 8                       # analytic + counted, a few seconds
    python benchmarks/profile_sweep.py --seg-size 8 --measure --time-budget 120          # + time, memory (CPU)
    python benchmarks/profile_sweep.py --seg-size 8 --device cuda --measure              # on a GPU
    python benchmarks/profile_sweep.py --sweep --sweep-over m --seg-size 64 --output-dir out   # Fig. 5
"""

import sys
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srsum.cli.profile import profile_command  # noqa: E402


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(profile_command)
    app()


if __name__ == "__main__":
    main()
