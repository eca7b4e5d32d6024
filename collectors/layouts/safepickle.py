"""Plain values out of a pickle, read opcode by opcode: nothing is ever unpickled.

``pickle.loads`` on bytes from a store runs whatever the bytes ask for (a
``GLOBAL``/``STACK_GLOBAL`` names any callable, ``REDUCE`` calls it). Here
:func:`pickletools.genops` only parses the opcodes and their arguments; a small
stack machine builds str, bytes (as text), int, float, bool, None, dict, list and
tuple (as list) from them, and refuses the whole value at the first opcode that
would import, call or build an object (GLOBAL, STACK_GLOBAL, REDUCE, INST, OBJ,
NEWOBJ, BUILD, EXT*, PERSID...). A refused or broken pickle is ``None``: the
caller shows it as opaque.
"""

from __future__ import annotations

import pickletools
from typing import Any

from collectors.records import display

MAX_OPS = 20_000

_SCALARS = {
    "BININT",
    "BININT1",
    "BININT2",
    "INT",
    "LONG",
    "LONG1",
    "LONG4",
    "BINFLOAT",
    "FLOAT",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "BYTEARRAY8",
}
_CONSTANTS: dict[str, Any] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_EMPTY = {"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": list, "EMPTY_SET": list}
_NOOPS = {"PROTO", "FRAME"}


class Refused(Exception):
    """The pickle asks for more than plain values."""


_MARK = object()


def is_pickle(raw: bytes) -> bool:
    """Protocol 2 and later begin with PROTO (``\\x80`` and the protocol number)."""
    return len(raw) > 2 and raw[0] == 0x80 and 2 <= raw[1] <= 5


def decode(raw: bytes) -> Any:
    """The value the pickle holds, if it is made of plain values only; else ``None``."""
    try:
        return _run(raw)
    except (Refused, ValueError, IndexError, KeyError, TypeError, RecursionError):
        return None


def _run(raw: bytes) -> Any:
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for count, (op, arg, _pos) in enumerate(pickletools.genops(raw)):
        if count > MAX_OPS:
            raise Refused("too long")
        name = op.name
        if name in _NOOPS:
            continue
        if name == "STOP":
            if len(stack) != 1 or stack[0] is _MARK:
                raise Refused("unbalanced")
            return stack[0]
        if name in _SCALARS:
            stack.append(_scalar(arg))
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name in _EMPTY:
            stack.append(_EMPTY[name]())
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("SETITEM", "SETITEMS", "APPEND", "APPENDS", "ADDITEMS"):
            _fill(stack, name)
        elif name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
            items = _pop_mark(stack)
            if name == "DICT":
                stack.append(_pairs(items))
            else:
                stack.append(items)
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            if len(items) != n or _MARK in items:
                raise Refused("short stack")
            del stack[-n:]
            stack.append(items)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[_index(arg)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[_index(arg)])
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            _pop_mark(stack)
        elif name == "DUP":
            stack.append(stack[-1])
        else:  # GLOBAL, STACK_GLOBAL, REDUCE, INST, OBJ, NEWOBJ, BUILD, EXT1..4, PERSID...
            raise Refused(name)
    raise Refused("no STOP")


def _scalar(arg: Any) -> Any:
    if isinstance(arg, (bytes, bytearray)):
        return display(bytes(arg))
    if isinstance(arg, (str, int, float)):
        return arg
    raise Refused(type(arg).__name__)


def _pop_mark(stack: list[Any]) -> list[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise Refused("no MARK")


def _pairs(items: list[Any]) -> dict[Any, Any]:
    if len(items) % 2:
        raise Refused("odd items")
    out: dict[Any, Any] = {}
    for k, v in zip(items[::2], items[1::2], strict=True):
        if isinstance(k, (dict, list)):
            raise Refused("unhashable key")
        out[k] = v
    return out


def _fill(stack: list[Any], name: str) -> None:
    if name == "SETITEM":
        value, key = stack.pop(), stack.pop()
        target = stack[-1]
        if not isinstance(target, dict) or isinstance(key, (dict, list)):
            raise Refused("SETITEM")
        target[key] = value
    elif name == "APPEND":
        value = stack.pop()
        if not isinstance(stack[-1], list):
            raise Refused("APPEND")
        stack[-1].append(value)
    else:
        items = _pop_mark(stack)
        target = stack[-1]
        if name == "SETITEMS" and isinstance(target, dict):
            target.update(_pairs(items))
        elif name in ("APPENDS", "ADDITEMS") and isinstance(target, list):
            target.extend(items)
        else:
            raise Refused(name)


def _index(arg: Any) -> int:
    if isinstance(arg, (int, str)):
        return int(arg)
    raise Refused("memo index")
