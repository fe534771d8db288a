"""Tar bytes written by hand, header by header: what ``tarfile`` would never write (negative sizes, sparse
members, lying PAX records, names that are not UTF-8), for the hostile-input tests."""
from __future__ import annotations

BLOCK = 512


def header(name: bytes | str, size: int = 0, kind: bytes = b"0", size_field: bytes | None = None,
           extra: dict[int, bytes] | None = None) -> bytes:
    """One 512-byte ustar header with a correct checksum. ``size_field``: the raw 12 bytes of the size field
    (e.g. base-256 for a negative size); ``extra``: raw bytes placed at the given offsets."""
    raw = bytearray(BLOCK)
    name = name.encode() if isinstance(name, str) else name
    raw[0:len(name[:100])] = name[:100]
    raw[100:108] = b"0000644\0"
    raw[108:116] = raw[116:124] = b"0000000\0"
    raw[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    raw[136:148] = b"00000000000\0"
    raw[156:157] = kind
    raw[257:265] = b"ustar\x0000"
    for offset, value in (extra or {}).items():
        raw[offset:offset + len(value)] = value
    raw[148:156] = b" " * 8
    raw[148:156] = f"{sum(raw):06o}\0 ".encode()
    return bytes(raw)


def member(name: bytes | str, data: bytes, kind: bytes = b"0") -> bytes:
    """A header and its data, padded to whole blocks."""
    return header(name, len(data), kind) + data + bytes(-len(data) % BLOCK)


def pax(records: dict[str, str]) -> bytes:
    """A PAX extended header (type x) applying ``records`` to the next member."""
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        length = len(text) + len(str(len(text)))
        length = len(text) + len(str(length))
        body += str(length).encode() + text
    return member("././@PaxHeader", body, b"x")


def negative_size() -> bytes:
    """A member whose size field is base-256 -512: Python 3.11.7's tarfile walks back onto the same header."""
    return header("loop.txt", size_field=b"\xff" * 10 + (-512 & 0xFFFF).to_bytes(2, "big"))


def gnu_sparse(name: str, real_size: int, stored: bytes) -> bytes:
    """An old-GNU sparse member (type S): ``stored`` is all its archive holds; it expands to ``real_size``."""
    extra = {483: f"{real_size:011o}\0".encode(),  # realsize
             386: f"{0:011o}\0".encode() + f"{len(stored):011o}\0".encode()}  # one map entry: offset 0, numbytes
    return header(name, len(stored), b"S", extra=extra) + stored + bytes(-len(stored) % BLOCK)


def archive(*parts: bytes) -> bytes:
    """The members followed by the two zero blocks that end an archive."""
    return b"".join(parts) + bytes(2 * BLOCK)
