"""``python -m srsum.cli``: the same as the ``srsum`` command (used by accelerate launch and torchrun)."""

from srsum.cli import main

main()
