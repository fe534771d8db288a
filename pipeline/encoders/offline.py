"""Offline builds of encoder architectures: the tiny preset and random-init copies of the paper's.

Each build is deterministic (fixed seed), written with ``save_pretrained`` into a cache folder and
loaded back through the same ``from_pretrained`` path as hub models. Builds are atomic: a folder is
built under a temporary name and renamed into place, so concurrent actors never see half a model.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Callable

from pipeline.modality import Modality

log = logging.getLogger(__name__)
BUILD_VERSION = "v1"  # bump when a builder changes, so caches are rebuilt


def _tiny_image(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)
    ViTModel(cfg).save_pretrained(dest)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(dest)


def _tiny_text(dest: str) -> None:
    from transformers import BertConfig, BertModel

    tok = _local_tokenizer(max_length=64)
    cfg = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)


def _tiny_audio(dest: str) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(32, 32, 32), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                         feat_extract_norm="layer", do_stable_layer_norm=True)  # maskable: batched path
    Wav2Vec2Model(cfg).save_pretrained(dest)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True).save_pretrained(dest)


def _tiny_video(dest: str) -> None:
    from transformers import VideoMAEConfig, VideoMAEImageProcessorPil, VideoMAEModel

    cfg = VideoMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=32, patch_size=8, num_frames=4, tubelet_size=2)
    VideoMAEModel(cfg).save_pretrained(dest)
    VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(dest)


def _paper_image(dest: str) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    ViTModel(ViTConfig()).save_pretrained(dest)  # ViT-B/16 at 224, as google/vit-base-patch16-224
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(dest)


def _paper_text(dest: str) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig()).save_pretrained(dest)  # bert-base architecture; ids of the local vocab fit
    _local_tokenizer(max_length=512).save_pretrained(dest)


def _paper_audio(dest: str) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Config()).save_pretrained(dest)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=False).save_pretrained(dest)


def _paper_video(dest: str) -> None:
    from transformers import VideoMAEConfig, VideoMAEImageProcessorPil, VideoMAEModel

    VideoMAEModel(VideoMAEConfig()).save_pretrained(dest)  # 16 frames, 224x224, tubelet 2
    VideoMAEImageProcessorPil().save_pretrained(dest)


def _local_tokenizer(max_length: int):
    from transformers import BertTokenizer

    from pipeline.encoders.vocab import tiny_vocab

    # BertTokenizer(vocab=...) is used on purpose: BertTokenizerFast(vocab_file=...) maps every word
    # to [UNK] in transformers 5.x (a test checks known words survive the save/load round trip).
    return BertTokenizer(vocab=tiny_vocab(), model_max_length=max_length)


BUILDERS: dict[tuple[str, Modality], Callable[[str], None]] = {
    ("tiny", Modality.IMAGE): _tiny_image,
    ("tiny", Modality.TEXT): _tiny_text,
    ("tiny", Modality.AUDIO): _tiny_audio,
    ("tiny", Modality.VIDEO): _tiny_video,
    ("paper", Modality.IMAGE): _paper_image,
    ("paper", Modality.TEXT): _paper_text,
    ("paper", Modality.AUDIO): _paper_audio,
    ("paper", Modality.VIDEO): _paper_video,
}


def ensure_built(kind: str, modality: Modality, cache_dir: str) -> str:
    """Return the folder of the offline build ``kind`` ('tiny' or 'paper') of ``modality``, building it once."""
    dest = os.path.join(cache_dir, f"{kind}-{BUILD_VERSION}", modality.value)
    if os.path.exists(os.path.join(dest, "config.json")):
        return dest
    import torch

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{modality.value}-", dir=os.path.dirname(dest))
    log.info("building %s %s encoder (random weights, seed 0) into %s", kind, modality.value, dest)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            BUILDERS[(kind, modality)](tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.exists(os.path.join(dest, "config.json")):  # another process won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
