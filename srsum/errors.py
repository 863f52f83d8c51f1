"""The exception types srsum raises for the user.

Library functions raise :class:`SrsumError` with a one-line message that names the field and what is
allowed; the CLI prints ``str(error)`` on stderr and exits non-zero, with no traceback: 2 for bad input or
usage (:class:`SrsumError`, :class:`UsageError`), 1 for a runtime failure (:class:`RuntimeFailure`, or an
operating-system error such as a full disk). It subclasses ``ValueError`` so library callers can catch the
familiar type.
"""


class SrsumError(ValueError):
    """Bad input or an unusable file/model: the message is meant for the user, on one line."""


class UsageError(SrsumError):
    """An option whose value cannot work (out of range, unknown name, contradicting another option).

    The CLI exits with code 2 for it, as for a malformed command line (and as for other bad input).
    """


class RuntimeFailure(SrsumError):
    """The input is fine but the work could not be done here and now (the Hugging Face Hub cannot be
    reached, ...): the CLI exits with code 1."""
