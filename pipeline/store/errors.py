"""The store's errors, apart from the modules that raise them: the read error (``sources`` (files, S3) and ``http``
(URLs, which ``sources`` calls) both raise it, so neither imports the other for it) and the manifest error (the
manifest's planning and reading, its parsing and its rows all raise it)."""
from __future__ import annotations


class ReadError(OSError):
    """A media file could not be read; the message names the URI and the cause."""


class ManifestError(ValueError):
    """The manifest cannot be used as a whole (unreadable, no id column, duplicate ids, ...)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message  # as raised: Ray Data appends retry advice to args when it re-raises from a task
