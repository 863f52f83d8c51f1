"""The one exception type srsum raises for bad input.

Library functions raise :class:`SrsumError` with a one-line message that names the field and what is
allowed; the CLI prints ``str(error)`` on stderr and exits non-zero, with no traceback.
It subclasses ``ValueError`` so library callers can catch the familiar type.
"""


class SrsumError(ValueError):
    """Bad input or an unusable file/model: the message is meant for the user, on one line."""


class UsageError(SrsumError):
    """An option whose value cannot work (out of range, unknown name, contradicting another option).

    The CLI exits with code 2 for it, as for a malformed command line; other :class:`SrsumError`\\ s
    (unusable files, models, data) exit with 1.
    """
