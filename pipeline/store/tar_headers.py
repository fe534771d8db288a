"""Tar member headers read by a parser of our own, bounded in time and memory whatever the bytes claim.

Python's ``tarfile`` trusts what it reads: before the fix for CVE-2025-8194 (3.11.14, 3.12.12, 3.13.6) a
negative size makes it loop on one header forever; GNU sparse members expand to their declared size; a
name is decoded however it decodes. Shards are anyone's (a web-scraped corpus), so every header is checked
before it is used:

- a header whose checksum does not match is an error; a gzip, bzip2, xz or zstd stream is named as compressed;
- sizes (octal or base-256) are never negative and never run past the end of the file: each header lies
  strictly after the one before, so a walk ends after at most (file size / 512) headers;
- GNU long names and PAX extended headers are read only up to ``MAX_NAME_BYTES`` / ``MAX_PAX_BYTES``;
- sparse members (GNU type ``S``, PAX ``GNU.sparse.*``) are reported as such and their data never read;
- names must be UTF-8 (a sample's key becomes its id).
Only regular members carry data a caller may read; links, folders, devices and FIFOs are reported as
``other`` and never followed.
"""
from __future__ import annotations

import dataclasses
import sys
import tarfile
from typing import BinaryIO, Iterator, Literal

BLOCK = 512
MAX_NAME_BYTES = 64 << 10
MAX_PAX_BYTES = 1 << 20
_REGULAR = (b"0", b"\0", b"7")
_NO_DATA = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, folders, FIFOs: tar's size field is ignored
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\0": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class TarHeaderError(ValueError):
    """A header that is not a well-formed tar header (the message names the byte offset)."""


@dataclasses.dataclass(frozen=True)
class TarMember:
    name: str
    size: int          # bytes of data in the archive (a sparse member: its stored data, not its expanded size)
    offset: int        # where its data starts
    kind: Literal["file", "sparse", "other"]


def tarfile_is_affected() -> bool:
    """Whether this interpreter's ``tarfile`` accepts a negative member size (CVE-2025-8194: its member walk then
    loops on one header forever). Probed, not looked up: a fixed ``tarfile`` refuses a negative block count."""
    try:
        return tarfile.TarInfo()._block(-BLOCK) < 0  # type: ignore[attr-defined]
    except tarfile.TarError:
        return False
    except AttributeError:  # the private helper moved: a newer tarfile, assumed fixed
        return False


def interpreter_note() -> str | None:
    """What to say at start-up on an interpreter whose ``tarfile`` is affected (None on a fixed one)."""
    if not tarfile_is_affected():
        return None
    version = ".".join(map(str, sys.version_info[:3]))
    return (f"Python {version}'s tarfile loops forever on a negative member size (CVE-2025-8194; fixed in 3.11.14, "
            "3.12.12, 3.13.6): tar shards are read by this project's own header parser, never by tarfile")


def members(fh: BinaryIO, file_size: int | None, read: int = -1) -> Iterator[tuple[TarMember, bytes | None]]:
    """(member, data) per member of the tar open in ``fh`` (positioned at its start), in archive order.

    ``data`` is the member's bytes when it is a regular file of at most ``read`` bytes (``read`` < 0: never);
    else None and its data is skipped (a seek). ``file_size``: the archive's size when known, which every
    member's data must fit in. Raises TarHeaderError at the first malformed header.
    """
    offset, pending = 0, _Pending()
    while True:
        header = fh.read(BLOCK)
        if not header:
            return  # an archive without its end-of-archive blocks: accepted, as tar does
        if offset == 0:
            _check_uncompressed(header)
        if len(header) < BLOCK:
            raise TarHeaderError(f"truncated header at byte {offset}: {len(header)} of {BLOCK} bytes")
        if header == bytes(BLOCK):
            return
        _check_header(header, offset)
        kind, meta = header[156:157], header[156:157] in (b"L", b"K", b"x", b"X", b"g")
        size = _number(header[124:136], "size", offset)
        if kind in _NO_DATA:
            size = 0
        elif pending.size is not None and not meta:
            size = pending.size
        start = offset + BLOCK + (_extension_blocks(fh, header, offset) if kind == b"S" else 0)
        end = start + _padded(size)
        if file_size is not None and start + size > file_size:
            raise TarHeaderError(f"member at byte {offset} claims {size} bytes but the archive ends at byte "
                                 f"{file_size}")
        if meta:
            pending.extend(kind, _read_exact(fh, size, offset, MAX_PAX_BYTES if kind in b"xXg" else MAX_NAME_BYTES),
                           offset)
            _skip_to(fh, start + size, end)
            offset = end
            continue
        name = pending.sparse_name or (pending.name if pending.name is not None else _name(header, offset))
        sparse = kind == b"S" or pending.sparse
        member = TarMember(name, size, start, "sparse" if sparse else "file" if kind in _REGULAR else "other")
        pending = _Pending()
        data = None
        if member.kind == "file" and 0 <= size <= read:
            data = _read_exact(fh, size, offset, size)
            _skip_to(fh, start + size, end)
        else:
            fh.seek(end)
        yield member, data
        offset = end


@dataclasses.dataclass
class _Pending:
    """What GNU long-name and PAX headers say of the member after them."""

    name: str | None = None
    size: int | None = None
    sparse: bool = False
    sparse_name: str | None = None

    def extend(self, kind: bytes, data: bytes, offset: int) -> None:
        if kind == b"L":
            self.name = _decode(data.split(b"\0", 1)[0], offset)
        elif kind in (b"x", b"X", b"g"):
            for key, value in _pax_records(data, offset):
                if key.startswith(b"GNU.sparse."):
                    self.sparse = True
                    if key == b"GNU.sparse.name":  # the member's real name (its path names a stand-in)
                        self.sparse_name = _decode(value, offset)
                elif kind == b"g" and key in (b"path", b"size"):
                    raise TarHeaderError(f"global PAX header at byte {offset} sets {key.decode()!r} for every member")
                elif key == b"path":
                    self.name = _decode(value, offset)
                elif key == b"size":
                    if not value.isdigit() or not value.isascii():
                        raise TarHeaderError(f"PAX size {value[:40]!r} at byte {offset}: expected a non-negative "
                                             "decimal number")
                    self.size = int(value)


def _check_uncompressed(start: bytes) -> None:
    for magic, what in _COMPRESSED.items():
        if start.startswith(magic):
            raise TarHeaderError(f"is {what}-compressed: expected an uncompressed tar (decompress it first)")


def _check_header(header: bytes, offset: int) -> None:
    try:
        stored = _number(header[148:156], "checksum", offset)
    except TarHeaderError:
        stored = -1
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)  # bytes read as signed chars
    if stored != signed:
        what = "not a tar (no tar header at its start)" if offset == 0 else f"a corrupt header at byte {offset}"
        raise TarHeaderError(f"{what}: header checksum does not match")


def _number(field: bytes, what: str, offset: int) -> int:
    """A header number: octal digits, or base-256 (first byte 0x80 positive; 0xff negative, refused)."""
    if field[:1] == b"\xff":
        raise TarHeaderError(f"negative {what} in the header at byte {offset}")
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if any(c not in b"01234567" for c in digits):
        raise TarHeaderError(f"{what} field {field!r} in the header at byte {offset}: expected octal digits")
    return int(digits, 8)


def _extension_blocks(fh: BinaryIO, header: bytes, offset: int) -> int:
    """Bytes of the extended sparse-map blocks after an old-GNU sparse header (a flag byte chains them)."""
    extra, more = 0, header[482]
    while more:
        block = fh.read(BLOCK)
        if len(block) < BLOCK:
            raise TarHeaderError(f"truncated sparse map after the header at byte {offset}")
        extra, more = extra + BLOCK, block[504]
    return extra


def _name(header: bytes, offset: int) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix folder (GNU uses those bytes for other fields)
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _decode(name, offset)


def _decode(name: bytes, offset: int) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TarHeaderError(f"member name {name[:80]!r} at byte {offset} is not UTF-8 (byte 0x{name[e.start]:02x}): "
                             "expected UTF-8 names (a sample's key becomes its id)") from None


def _pax_records(data: bytes, offset: int) -> Iterator[tuple[bytes, bytes]]:
    """``<length> <key>=<value>\\n`` records; the length counts the whole record."""
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos, pos + 20)
        length = data[pos:space]
        if space < 0 or not length.isdigit() or int(length) <= space - pos + 1 or pos + int(length) > len(data):
            raise TarHeaderError(f"malformed PAX record at byte {pos} of the extended header at byte {offset}")
        record = data[space + 1:pos + int(length)]
        key, eq, value = record.partition(b"=")
        if not eq or not record.endswith(b"\n"):
            raise TarHeaderError(f"malformed PAX record {record[:40]!r} in the extended header at byte {offset}")
        yield key, value[:-1]
        pos += int(length)


def _read_exact(fh: BinaryIO, size: int, offset: int, limit: int) -> bytes:
    if size > limit:
        raise TarHeaderError(f"header at byte {offset} announces {size} bytes of names or attributes, over {limit}")
    data = fh.read(size)
    if len(data) < size:
        raise TarHeaderError(f"the archive ends inside the member at byte {offset} ({len(data)} of {size} bytes)")
    return data


def _skip_to(fh: BinaryIO, position: int, end: int) -> None:
    if end != position:
        fh.seek(end)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
