"""Decoding of media bytes/files into arrays the encoders' processors accept."""
from pipeline.media.errors import DecodeError

__all__ = ["DecodeError"]
