"""The lightweight OneEncoder projection: per-modality adapters, modality tokens, Universal Projection.

The model returns features; losses own labels and temperature. Inputs are cached encoder
features (B, K, D_m) from the feature store (K pooled tokens, or a token sequence padded with zero vectors),
outputs L2-normalised vectors (B, d).
"""
from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.config import StrictModel


class ModelConfig(StrictModel):
    """Shape of the projection model: the training config's ``model:`` block, and, with each modality's feature
    width D and K filled in by training, the artifact's config.json."""

    d: int = Field(256, ge=8, description="Width of the shared space.")
    layers: int = Field(1, ge=1, description="Universal Projection transformer layers.")
    heads: int = Field(4, ge=1, description="Attention heads (must divide d).")
    ff: int = Field(2048, ge=8, description="Feed-forward width of each transformer layer.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout in adapters and transformer.")
    in_dims: dict[str, int] = Field(default_factory=dict, description="Per modality: D of its cached features (set by training).")
    tokens: dict[str, int] = Field(default_factory=dict, description="Per modality: K of its cached features (set by training).")

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d % self.heads:
            raise ValueError(f"heads={self.heads} must divide d={self.d}")
        return self


class Adapter(nn.Module):
    """Projection head / alignment layer, applied to each token: Linear → GELU → Linear → Dropout → LayerNorm."""

    def __init__(self, in_dim: int, d: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Linear(d, d), nn.Dropout(dropout), nn.LayerNorm(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, D_m) → (B, K, d)."""
        return self.net(x)


class UniversalProjection(nn.Module):
    """LayerNorm → TransformerEncoder → residual → masked mean over tokens → L2 normalise."""

    def __init__(self, d: int, layers: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, K, d); mask: (B, K) True where the token is real. Returns (B, d), unit norm.

        Padding is excluded from attention and from the mean (a defect of the reference code).
        """
        pad = None if mask is None else ~mask
        h = x + self.encoder(self.norm(x), src_key_padding_mask=pad)
        if mask is None:
            pooled = h.mean(dim=1)
        else:
            weights = mask.to(h.dtype).unsqueeze(-1)
            pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1)


class OneEncoder(nn.Module):
    """Adapters and modality tokens per modality around one shared Universal Projection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict()
        self.modality_tokens = nn.ParameterDict()
        self.positions = nn.ParameterDict()  # modality -> (K, d) learned token positions, for K > 1
        self.up = UniversalProjection(config.d, config.layers, config.heads, config.ff, config.dropout)
        for name, dim in dict(config.in_dims).items():
            self._build(name, dim)

    def add_modality(self, name: str, in_dim: int, tokens: int) -> None:
        """Add an adapter and a token for a new modality (a later curriculum stage)."""
        if name in self.adapters:
            raise ValueError(f"modality {name!r} is already in the model")
        self.config.in_dims[name] = in_dim
        self.config.tokens[name] = tokens
        self._build(name, in_dim)

    def _build(self, name: str, in_dim: int) -> None:
        self.adapters[name] = Adapter(in_dim, self.config.d, self.config.dropout)
        self.modality_tokens[name] = nn.Parameter(torch.randn(self.config.d) * 0.02)
        if self.config.tokens.get(name, 1) > 1:
            # the transformer and the mean are order-blind: without positions the order of K tokens (a tone's
            # rhythm, a clip's motion) is lost. Zero at the start, so an artifact saved without them loads as it was.
            self.positions[name] = nn.Parameter(torch.zeros(self.config.tokens[name], self.config.d))

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict; positions missing from one saved before they existed stay zero (its behaviour)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("positions.")]:
            self.load_state_dict(state)  # raises, naming every missing and unexpected key

    @property
    def modalities(self) -> list[str]:
        return list(self.adapters.keys())

    def forward(self, modality: str, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """features: (B, K, D_m) cached encoder tokens → (B, d) unit vectors in the shared space. ``mask`` (B, K):
        True where a token is real; by default ``token_mask(features)`` (zero vectors are padding)."""
        if modality not in self.adapters:
            raise KeyError(f"modality {modality!r} is not in the model (it has {', '.join(self.modalities)})")
        if mask is None:
            mask = token_mask(features)
        x = self.adapters[modality](features) + self.modality_tokens[modality]
        if modality in self.positions:  # the first K tokens get positions; padding beyond K (masked) none
            pos = self.positions[modality][: x.shape[1]]
            x = x + nn.functional.pad(pos, (0, 0, 0, x.shape[1] - len(pos)))
        return self.up(x, mask)


def token_mask(features: torch.Tensor) -> torch.Tensor | None:
    """(B, K) True where a token of ``features`` (B, K, D) is real, None when K is 1 (nothing to mask).

    A token sequence (``tokens: all``) is stored padded with zero vectors, so every reader (training batches, the
    index, serving) passes padded tensors alone and each item's vector ignores its padding. The feature store
    refuses a shard with a zero vector anywhere but in a row's padding (``pipeline.store.integrity``); the first
    token always counts, so a row is never all padding.
    """
    if features.shape[1] == 1:
        return None
    mask = features.detach().ne(0).any(dim=-1)
    mask[:, 0] = True
    return mask


def rows_per_chunk(k: int, rows: int = 1024) -> int:
    """Items of K tokens to project at once outside training: ``rows`` for pooled features, fewer for long sequences,
    so that attention (items x heads x K x K scores) stays near 2^24 scores a head (VideoMAE's 1,568 tokens: 6 items)."""
    return max(1, min(rows, 2**24 // (k * k)))


def count_trainable(module: nn.Module) -> int:
    """Number of parameters that will receive gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
