"""The one error type of the decoders."""


class DecodeError(ValueError):
    """The media could not be decoded; the message says what was wrong and what was expected."""
