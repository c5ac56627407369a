"""The protobuf wire format, just enough of it to read an UShER tree without a dependency."""

from __future__ import annotations

from collections.abc import Iterator


def varint(buf: bytes, i: int) -> tuple[int, int]:
    """Read the base-128 varint that starts at `buf[i]`.

    Args:
        buf: The encoded message.
        i: Index of the varint's first byte.

    Returns:
        The value and the index just past the varint.

    Raises:
        IndexError: The varint runs past the end of `buf`.
    """
    result = shift = 0
    while True:
        byte = buf[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, a, b) of each field of the message in buf[start:end].

    Varints give (value, 0); length-delimited fields give their payload span (a, b); the
    fixed-width types, which the UShER tree schema does not use, are skipped over.

    Args:
        buf: The encoded data.
        start: Index of the message's first byte.
        end: Index just past the message.

    Yields:
        (field number, wire type, a, b) per field, in order.

    Raises:
        IndexError: A field runs past the message.
        ValueError: A field has a wire type that is not 0, 1, 2 or 5.
    """
    i = start
    while i < end:
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
            yield number, wire, value, 0
        elif wire == 2:
            size, i = varint(buf, i)
            if i + size > end:
                raise IndexError("length-delimited field runs past its message")
            yield number, wire, i, i + size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if i != end:
        raise IndexError("field runs past its message")
