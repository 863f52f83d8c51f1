"""Where library functions send progress, warnings and notes: :class:`Reporter` is the silent default;
the CLI passes a rich one (srsum.cli.common.RichReporter)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Reporter:
    """Where library functions send progress, warnings and notes. This one is silent."""

    @contextmanager
    def progress(self, description: str, total: int | None, completed: int = 0) -> Iterator[Callable[..., None]]:
        """Context for a long phase of ``total`` units (``completed`` done already); yields ``advance(n=1, **fields)``."""
        yield lambda n=1, **fields: None

    def warn(self, message: str) -> None:
        from srsum.data import DataWarning

        warnings.warn(message, DataWarning, stacklevel=3)

    def info(self, message: str) -> None:
        pass

    def metrics(self, title: str, values: dict[str, float]) -> None:
        pass
