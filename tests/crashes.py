"""A stop at an exact point of a write, for the crash-point tests (tests/embed/test_crash_points.py for the embed
job's commits, tests/train/test_stage_saves.py for training's stage saves and artifact).

A stop is a ``Crash`` raised from inside the write: a BaseException, which nothing in the jobs catches, so on disk
the state is what a kill at that instant leaves (every write is synchronous)."""
from __future__ import annotations

from pipeline.store.features import FeatureStore


class Crash(BaseException):
    """The driver stops here."""


def crash_on_write(monkeypatch, owner, name: str, when: str, matches) -> dict:
    """Make ``owner.name`` (a write function taking the target path first) raise Crash ``when`` ("before" or
    "after") its first call whose target satisfies ``matches``; the returned dict records what was hit."""
    real, hit = getattr(owner, name), {}

    def write(*args, **kwargs):
        target = args[1] if isinstance(args[0], FeatureStore) else args[0]
        if not hit and matches(str(target)):
            hit["target"] = str(target)
            if when == "before":
                raise Crash(target)
            real(*args, **kwargs)
            raise Crash(target)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, write)
    return hit
