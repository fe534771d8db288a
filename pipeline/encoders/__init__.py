"""Frozen pre-trained encoders: presets, offline builds, loading and pooling."""
