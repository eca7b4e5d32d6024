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
    # Java's modified UTF-8 encodes NUL as C0 80; everything else we meet is plain UTF-8.
    return raw.replace(b"\xc0\x80", b"\x00").decode("utf-8", errors="backslashreplace")
