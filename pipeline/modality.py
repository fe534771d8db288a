"""The one key type for modalities: a registered modality's name (see ``pipeline.modalities``)."""
from __future__ import annotations

from typing import Any


class Modality(str):
    """A modality name known to the registry; the value is the manifest column, config key and API value.

    ``Modality("depth")`` raises ValueError naming the registered modalities when there is no such
    module. It is a ``str``: it compares, hashes and serialises as its name.
    """

    def __new__(cls, name: Any) -> "Modality":
        from pipeline.modalities import get

        if isinstance(name, Modality):
            return name
        if not isinstance(name, str):
            raise ValueError(f"modality must be a string, got {type(name).__name__} {name!r}")
        return super().__new__(cls, get(name.strip().lower()).name)

    @property
    def value(self) -> str:
        return str.__str__(self)

    @property
    def spec(self):
        """This modality's ``ModalitySpec``: decoder, encoder forward, presets, MIME types."""
        from pipeline.modalities import get

        return get(self)

    @property
    def is_inline(self) -> bool:
        """True when the manifest holds the value itself (text), not a URI to media."""
        return self.spec.inline

    @classmethod
    def parse(cls, name: str) -> "Modality":
        """Return the modality called ``name``; raise ValueError naming the valid ones."""
        return cls(name)

    @classmethod
    def all(cls) -> list["Modality"]:
        """Every registered modality, in registry order."""
        from pipeline.modalities import names

        return [cls(n) for n in names()]

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
            raise ValueError("empty modality list: expected at least one of " + ", ".join(cls.all()))
        return out

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:  # as the plain name, so messages read `modality 'depth'`
        return repr(str.__str__(self))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.plain_serializer_function_ser_schema(str))
