"""Captioning: describe images with a local vision-language model or a local OpenAI-compatible server.

Here only what the command-line parser and the app need without importing any of it.
"""

from urllib.parse import urlparse

API_KEY_VARIABLE = "LUMINA_STUDIO_API_KEY"  # where the CLI and the app look for a server's key first


def is_loopback(url: str) -> bool:
    """Whether a server URL names this computer (images sent elsewhere leave it: the app asks first)."""
    host = urlparse(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
