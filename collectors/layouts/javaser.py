"""Just enough of Java object serialization to read Spring Session's values.

Spring Session's default ``JdkSerializationRedisSerializer`` stores every hash
value as a Java serialization stream (``AC ED 00 05``). Sessions only need
strings, ``Long`` and ``Integer`` (times, the idle timeout) and ``Boolean``;
any other object is shown by its class name. A value that is not a Java
stream is returned as text (Spring apps configured with a JSON serializer).
Nothing here executes or instantiates anything: it reads bytes.
"""

from __future__ import annotations

import json
import re
import struct

from collectors.records import display

MAGIC = b"\xac\xed\x00\x05"
TC_OBJECT = 0x73
TC_CLASSDESC = 0x72
TC_STRING = 0x74
TC_LONGSTRING = 0x7C

_NUMBERS = {
    "java.lang.Long": (">q", 8),
    "java.lang.Integer": (">i", 4),
    "java.lang.Short": (">h", 2),
    "java.lang.Byte": (">b", 1),
}


def decode(raw: bytes) -> str | int | bool | None:
    """The value as Python, or a short description such as ``<java.util.HashMap>``."""
    if not raw.startswith(MAGIC):
        text = display(raw)
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, (str, int, bool)) or parsed is None:
            return parsed
        return text
    body = raw[len(MAGIC) :]
    if not body:
        return None
    tag = body[0]
    try:
        if tag == TC_STRING:
            (length,) = struct.unpack(">H", body[1:3])
            return _modified_utf8(body[3 : 3 + length])
        if tag == TC_LONGSTRING:
            (length,) = struct.unpack(">Q", body[1:9])
            return _modified_utf8(body[9 : 9 + length])
        if tag == TC_OBJECT and len(body) > 4 and body[1] == TC_CLASSDESC:
            (name_len,) = struct.unpack(">H", body[2:4])
            class_name = body[4 : 4 + name_len].decode("utf-8", errors="replace")
            if class_name in _NUMBERS:
                fmt, size = _NUMBERS[class_name]
                (number,) = struct.unpack(fmt, body[-size:])
                return int(number)
            if class_name == "java.lang.Boolean":
                return bool(body[-1])
            return f"<{class_name}>"
    except struct.error:
        pass
    return "<java object>"


def _modified_utf8(raw: bytes) -> str:
    # Java's modified UTF-8: NUL is C0 80, an astral character two encoded surrogates
    raw = raw.replace(b"\xc0\x80", b"\x00")
    try:
        text = raw.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="backslashreplace")
    return text.encode("utf-16-be", "surrogatepass").decode("utf-16-be", errors="replace")


# ---------------------------------------------------------------- writing (Spring Session's values)

_LONG = bytes.fromhex(
    "7372000e6a6176612e6c616e672e4c6f6e673b8be490cc8f23df0200014a000576616c7565"
    "787200106a6176612e6c616e672e4e756d62657286ac951d0b94e08b0200007870"
)
_INTEGER = bytes.fromhex(
    "737200116a6176612e6c616e672e496e746567657212e2a0a4f781873802000149000576616c7565"
    "787200106a6176612e6c616e672e4e756d62657286ac951d0b94e08b0200007870"
)


_ASTRAL = re.compile(rb"[\xf0-\xf4]")
"""The lead byte of a 4-byte UTF-8 sequence: a character outside the BMP."""


def encode_long(value: int) -> bytes:
    """A ``java.lang.Long`` as ``ObjectOutputStream`` writes it (Spring Session's times)."""
    return MAGIC + _LONG + struct.pack(">q", value)


def encode_int(value: int) -> bytes:
    """A ``java.lang.Integer`` (Spring Session's ``maxInactiveInterval``)."""
    return MAGIC + _INTEGER + struct.pack(">i", value)


def encode_string(value: str) -> bytes:
    """A ``java.lang.String`` in Java's modified UTF-8 (NUL as C0 80, astral characters as
    two encoded surrogates)."""
    raw = value.encode("utf-8", "surrogatepass")
    if _ASTRAL.search(raw):  # rare: each astral character as its two surrogates, encoded
        units = value.encode("utf-16-be", "surrogatepass")
        body = "".join(chr(int.from_bytes(units[i : i + 2], "big")) for i in range(0, len(units), 2))
        raw = body.encode("utf-8", "surrogatepass")
    raw = raw.replace(b"\x00", b"\xc0\x80")
    if len(raw) < 0x10000:
        return MAGIC + bytes([TC_STRING]) + struct.pack(">H", len(raw)) + raw
    return MAGIC + bytes([TC_LONGSTRING]) + struct.pack(">Q", len(raw)) + raw
