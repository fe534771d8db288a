"""Text: inline in the manifest and the API; BERT (paper) or any tokenizer + text model, CLIP/SigLIP/CLAP text towers."""
from __future__ import annotations

from typing import Any

from pipeline.media.errors import DecodeError
from pipeline.modalities.base import Limit, ModalitySpec, Synthetic


def decode(value: str, settings: Any) -> str:
    """A manifest or API string → the text encoded: stripped, non-empty, at most limits.max_text_chars."""
    text = value.strip()
    if not text:
        raise DecodeError("empty text: expected a non-empty string")
    limit = settings.limits.max_text_chars
    if len(text) > limit:
        raise DecodeError(f"text has {len(text)} characters, over limits.max_text_chars={limit}")
    return text


def forward(encoder: Any, texts: list[str]):
    """Tokenize (truncated at encoders.text.max_text_tokens, else the model's limit) → hidden, valid tokens."""
    limit = encoder.enc.max_text_tokens or int(encoder.model.config.max_position_embeddings)
    batch = encoder.processor(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    return encoder.run(**batch.to(encoder.device)), batch["attention_mask"].sum(dim=1)


def _tokenizer(max_length: int):
    from transformers import BertTokenizer

    from pipeline.encoders.vocab import tiny_vocab

    # BertTokenizer(vocab=...) is used on purpose: BertTokenizerFast(vocab_file=...) maps every word
    # to [UNK] in transformers 5.x (a test checks known words survive the save/load round trip).
    return BertTokenizer(vocab=tiny_vocab(), model_max_length=max_length)


def build_tiny(dest: str) -> None:
    from transformers import BertConfig, BertModel

    tok = _tokenizer(max_length=64)
    cfg = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)


def build_paper(dest: str) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig()).save_pretrained(dest)  # bert-base architecture; ids of the local vocab fit
    _tokenizer(max_length=512).save_pretrained(dest)



def write_sample(scene: Any, rng: Any, path: str | None) -> str:
    """A caption of ``scene``: the first template, or (``scene.vary``) one of them at random."""
    template = scene.captions[int(rng.integers(len(scene.captions)))] if scene.vary else scene.captions[0]
    return template.format(c=scene.colour, s=scene.shape)


def draw_sample(scene: Any, rng: Any) -> str:
    """A caption of ``scene`` from one of its style's templates, at random."""
    return scene.captions[int(rng.integers(len(scene.captions)))].format(c=scene.colour, s=scene.shape)


SPEC = ModalitySpec(
    name="text", inline=True, reads="inline", decode=decode, forward=forward, processor="AutoTokenizer",
    tower="text", paper_model="bert-base-uncased", builds={"tiny": build_tiny, "paper": build_paper},
    mime_types=("text/plain",), extensions=(".txt",), decoded_dtype="str",
    limits={"max_text_chars": Limit(int, 100_000, 20_000, "Longest text accepted, in characters.", {"ge": 1})},
    synthetic=Synthetic(write_sample, draw_sample))
