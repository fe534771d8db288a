"""The one key type for modalities."""
from __future__ import annotations

import enum


class Modality(str, enum.Enum):
    """A kind of input the system can embed. The value is the manifest column name."""

    IMAGE = "image"
    TEXT = "text"
    AUDIO = "audio"
    VIDEO = "video"

    @property
    def is_inline(self) -> bool:
        """True when the manifest holds the value itself (text), not a URI to media."""
        return self is Modality.TEXT

    @classmethod
    def parse(cls, name: str) -> "Modality":
        """Return the modality called ``name``; raise ValueError naming the valid ones."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown modality {name!r}: expected one of {valid}") from None

    @classmethod
    def parse_list(cls, names: str | list[str]) -> list["Modality"]:
        """Parse ``"image,text"`` or ``["image", "text"]`` into modalities, keeping order, no repeats."""
        if isinstance(names, str):
            names = [n for n in names.split(",") if n.strip()]
        out: list[Modality] = []
        for name in names:
            m = cls.parse(name)
            if m not in out:
                out.append(m)
        if not out:
            raise ValueError("empty modality list: expected at least one of "
                             + ", ".join(m.value for m in cls))
        return out

    def __str__(self) -> str:
        return self.value
