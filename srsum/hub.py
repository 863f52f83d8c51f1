"""Hugging Face Hub names: fail at once, with a hint, when the Hub cannot be reached.

Offline, ``from_pretrained("t5-small")`` retries for half a minute before it gives up, and its
error never mentions ``HF_HUB_OFFLINE``. :func:`require_hub` checks first: a name already in the
local cache, or ``HF_HUB_OFFLINE=1``, goes straight to the loader (the cache is then used without
asking the Hub); otherwise one connection attempt (a few seconds at most) decides.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from srsum.errors import RuntimeFailure

CONNECT_TIMEOUT_S = 3.0


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the Hub this process talks to (``HF_ENDPOINT`` or huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_unreachable_reason(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a connection to the Hub opens; else why not, in a few words."""
    host, port = hub_endpoint()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except OSError as error:
        return f"{host}: {error.strerror or type(error).__name__}" if not isinstance(error, socket.timeout) \
            else f"{host}: no answer in {timeout:.0f} s"


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def in_cache(repo_id: str, filename: str = "config.json") -> bool:
    """True when ``filename`` of ``repo_id`` is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False


def require_hub(name: str, what: str = "model") -> None:
    """Raise a one-line RuntimeFailure at once when ``name`` must come from a Hub that cannot be reached."""
    if is_offline() or in_cache(name):
        return
    reason = hub_unreachable_reason()
    if reason is not None:
        raise RuntimeFailure(f"{what}: {name!r} is neither a local folder nor in the Hugging Face cache, and the Hub "
                         f"cannot be reached ({reason}); pass a local {what} folder, or run once with network "
                         "access (offline, HF_HUB_OFFLINE=1 uses what is already cached)")
