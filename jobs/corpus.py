"""`oneencoder sample-corpus DEST`: write a small generated paired corpus and its manifest.

The corpus itself comes from the library (``pipeline.synthetic``): every registered modality that can draw
its own samples takes part.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.config import StrictModel
from pipeline.modality import Modality
from pipeline.synthetic.corpus import SAMPLE_MODALITIES, synthetic_entries, write_sample_corpus


class SampleCorpusConfig(StrictModel):
    dest: str = Field(description="Folder to write (images/, audio/, video/, depth/ and manifest.jsonl).")
    n: int = Field(24, ge=1, description="Number of samples.")
    modalities: list[Modality] = Field([Modality(m) for m in SAMPLE_MODALITIES],
                                       min_length=1, description="Columns to write, e.g. image,text,depth.")

    @field_validator("modalities", mode="before")
    @classmethod
    def _split(cls, value):
        return [m for m in value.split(",") if m.strip()] if isinstance(value, str) else value

    @field_validator("modalities")
    @classmethod
    def _can_generate(cls, value: list[Modality]) -> list[Modality]:
        synthetic_entries(value)  # ValueError naming each modality that cannot
        return value


def run(cfg: SampleCorpusConfig, args: object = None) -> int:
    """`oneencoder sample-corpus DEST`: write it and print the manifest's path."""
    print(write_sample_corpus(cfg.dest, n=cfg.n, modalities=tuple(cfg.modalities)))
    return 0


if __name__ == "__main__":
    import sys

    from jobs import registry

    sys.exit(registry.main("sample-corpus"))
