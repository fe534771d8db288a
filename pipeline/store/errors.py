"""The store's read error, apart from the readers: ``sources`` (files, S3) and ``http`` (URLs, which ``sources``
calls) both raise it, so neither imports the other for it."""
from __future__ import annotations


class ReadError(OSError):
    """A media file could not be read; the message names the URI and the cause."""
