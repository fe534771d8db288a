"""Loading a frozen encoder's weights: a single-modality model, or one tower of a dual-tower checkpoint.

``AutoModel`` on a CLIP/SigLIP/CLAP checkpoint gives the two-tower model, whose forward wants both
inputs. For those the modality's tower (vision, text or audio) is loaded with its projection, and the
projected embedding is the encoder's output (one vector per item: the space the towers were trained in).
"""
from __future__ import annotations

from typing import Any

# (model_type of the checkpoint, tower) -> (transformers class, output attribute, config key of its width)
TOWERS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("clip", "vision"): ("CLIPVisionModelWithProjection", "image_embeds", "projection_dim"),
    ("clip", "text"): ("CLIPTextModelWithProjection", "text_embeds", "projection_dim"),
    ("siglip", "vision"): ("SiglipVisionModel", "pooler_output", "vision_config.hidden_size"),
    ("siglip", "text"): ("SiglipTextModel", "pooler_output", "text_config.hidden_size"),
    ("clap", "audio"): ("ClapAudioModelWithProjection", "audio_embeds", "projection_dim"),
    ("clap", "text"): ("ClapTextModelWithProjection", "text_embeds", "projection_dim"),
}


def load_encoder_model(source: str, revision: str | None, tower: str, modality: str) -> tuple[Any, str | None, int]:
    """(model, output attribute or None for last_hidden_state, output width D) of the checkpoint at ``source``."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(source, revision=revision)
    families = {family for family, _ in TOWERS}
    if config.model_type in families:
        entry = TOWERS.get((config.model_type, tower))
        if entry is None:
            have = ", ".join(t for f, t in TOWERS if f == config.model_type)
            raise ValueError(f"{source} is a {config.model_type} checkpoint, which has {have} towers: none for "
                             f"modality {modality!r} (its encoder needs a {tower} tower)")
        cls_name, output, width = entry
        # the tower's own config, with the pair's shared projection width (a tower class reading the whole
        # checkpoint's config would take its own default width and refuse the saved projection)
        tower_config = getattr(config, f"{tower}_config")
        if hasattr(config, "projection_dim"):
            tower_config.projection_dim = config.projection_dim
        model = getattr(transformers, cls_name).from_pretrained(source, revision=revision, config=tower_config)
        value: Any = config.to_dict()
        for key in width.split("."):
            value = value[key]
        return model, output, int(value)
    model = transformers.AutoModel.from_pretrained(source, revision=revision)
    return model, None, int(model.config.hidden_size)

