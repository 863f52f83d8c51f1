"""The one exception type srsum raises for bad input.

Library functions raise :class:`SrsumError` with a one-line message that names the field and what is
allowed; the CLI prints ``str(error)`` on stderr and exits non-zero, with no traceback.
It subclasses ``ValueError`` so library callers can catch the familiar type.
"""


class SrsumError(ValueError):
    """Bad input or an unusable file/model: the message is meant for the user, on one line."""
