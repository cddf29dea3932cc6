"""A bounded reader for the small subset of pickle that CIFAR-10 batch files use.

A pickle is a program: the standard unpickler runs its opcodes and may call any
importable function, and even an allow-list of NumPy helpers is not enough
(``numpy.dtype`` with a crafted state turns file bytes into object pointers). This
module never calls the standard unpickler and never imports anything a file names.
It interprets a fixed list of binary opcodes (protocols 2 to 5) itself and builds
only these values:

* ``None``, ``bool``, ``int``, ``bytes``, ``bytearray``, ``str``, and ``list``,
  ``tuple`` and ``dict`` of them (dict keys: ``bytes``, ``str`` or ``int``);
* NumPy arrays of a plain fixed-size integer dtype (``u1 i1 u2 i2 u4 i4 u8 i8``,
  either byte order) with at most two dimensions and at most
  :data:`MAX_ARRAY_ELEMENTS` elements, built by this module from raw bytes whose
  length must match the declared shape exactly.

A NumPy-written array names ``numpy.core.multiarray._reconstruct`` (or
``numpy._core...``), ``numpy.ndarray``, ``numpy.dtype`` and, from protocol 5,
``numpy._core.numeric._frombuffer``; Python 3 writes ``bytes`` at protocol 2 as
``_codecs.encode(text, 'latin1')``. Those names are recognised as *descriptions*:
the dtype is rebuilt from its type code alone (the flags, fields and sub-array
parts of its state are refused or ignored, never applied), and no NumPy function
named by the file is called. Any other opcode or global is refused.

Work and memory are bounded: the file is at most :data:`MAX_FILE_BYTES`, at most
:data:`MAX_OPCODES` opcodes run, and the bytes created by ``_codecs.encode`` (the
only operation that makes new data out of memoised data) total at most
:data:`MAX_CREATED_BYTES`. Arrays are zero-copy views of bytes read from the file.
Shared sub-objects ("billion laughs") stay shared here; the caller must check the
structure it expects without recursing into unknown values.
"""

from __future__ import annotations

import math
import pickletools
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = [
    "ARRAY_TYPE_CODES",
    "MAX_ARRAY_ELEMENTS",
    "MAX_CREATED_BYTES",
    "MAX_FILE_BYTES",
    "MAX_OPCODES",
    "ArrayBuilder",
    "PickleRefused",
    "load_pickle_subset",
]

#: Largest file read, in bytes: a 10,000-row CIFAR-10 batch written by Python 3
#: at protocol 2 is about 46.5 MB (pixel bytes above 127 take two UTF-8 bytes).
MAX_FILE_BYTES = 80_000_000
#: Most opcodes run: a 10,000-row batch with file names takes about 90,000 at
#: protocol 2 and 30,000 at protocol 4 or 5.
MAX_OPCODES = 250_000
#: Most bytes that ``_codecs.encode`` may create in one file (64 MiB).
MAX_CREATED_BYTES = 64 << 20
#: Most elements of one array: 10,000 rows of 3,072 bytes.
MAX_ARRAY_ELEMENTS = 10_000 * 3_072
#: Type codes of the dtypes an array may have: plain fixed-size integers.
ARRAY_TYPE_CODES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")

_MAX_GLOBAL_NAME_BYTES = 128
_OPCODE_NAMES = {op.code.encode("latin-1"): op.name for op in pickletools.opcodes}

#: (module, name) a pickle may name -> what it stands for here.
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
    ("__builtin__", "bytes"): "bytes",
    ("builtins", "bytes"): "bytes",
}


class PickleRefused(ValueError):
    """The file is not a pickle of the accepted subset; the message says what was found."""


class _Global:
    """A global named by the pickle, recognised as one of :data:`_GLOBALS`."""

    __slots__ = ("kind", "qualname")

    def __init__(self, kind: str, qualname: str) -> None:
        self.kind, self.qualname = kind, qualname


class _DtypeSpec:
    """A ``numpy.dtype`` description: a type code of :data:`ARRAY_TYPE_CODES` and a byte order."""

    __slots__ = ("byteorder", "code")

    def __init__(self, code: str) -> None:
        self.code, self.byteorder = code, "="

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype, built from the type code and byte order only."""
        dt = np.dtype(self.code)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class ArrayBuilder:
    """What ``_reconstruct`` stands for: an array whose contents arrive with BUILD.

    ``array`` is None until the BUILD opcode gave a valid state; callers must
    refuse a builder whose ``array`` is still None.
    """

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


def _short_text(value: Any) -> Any:
    """``value`` as str if it is a short ``bytes`` (Python 2 wrote type codes as byte strings), else unchanged."""
    return value.decode("latin-1") if type(value) is bytes and len(value) <= 8 else value


def _describe(value: Any) -> str:
    """A short description of a value for error messages (never its whole repr)."""
    if isinstance(value, _Global):
        return f"global {value.qualname}"
    if isinstance(value, (bytes, bytearray, str, list, tuple, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


class _Interpreter:
    """Runs the opcodes of one pickle held in memory; see the module docstring."""

    def __init__(self, data: bytes, path: Path) -> None:
        self._data, self._pos, self._path = data, 0, path
        self._stack: list[Any] = []
        self._marks: list[int] = []
        self._memo: dict[int, Any] = {}
        self._created = 0

    # -- reading the byte stream ------------------------------------------------
    def _fail(self, expected: str, got: str) -> NoReturn:
        raise PickleRefused(f"{self._path}: expected {expected}, got {got} (at byte {self._pos})")

    def _take(self, n: int) -> bytes:
        if n > len(self._data) - self._pos:
            self._fail(f"{n} more bytes", f"{len(self._data) - self._pos} (the file is truncated)")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def _uint(self, size: int) -> int:
        return int.from_bytes(self._take(size), "little")

    def _line(self) -> str:
        end = self._data.find(b"\n", self._pos, self._pos + _MAX_GLOBAL_NAME_BYTES)
        if end < 0:
            self._fail(f"a global name of at most {_MAX_GLOBAL_NAME_BYTES} bytes ending in a newline", "none")
        text = self._data[self._pos : end].decode("latin-1")
        self._pos = end + 1
        return text

    def _text(self, size: int) -> str:
        raw = self._take(self._uint(size))
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            self._fail("UTF-8 text", f"undecodable bytes ({exc.reason})")

    # -- the stack ----------------------------------------------------------------
    def _fence(self) -> int:
        """Stack index below which values belong to an open MARK and may not be popped."""
        return self._marks[-1] if self._marks else 0

    def _pop(self) -> Any:
        if len(self._stack) <= self._fence():
            self._fail("a value on the stack", "an empty stack")
        return self._stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self._marks:
            self._fail("a MARK before this opcode", "none")
        start = self._marks.pop()
        items = self._stack[start:]
        del self._stack[start:]
        return items

    def _top(self, kind: type) -> Any:
        if len(self._stack) <= self._fence() or type(self._stack[-1]) is not kind:
            self._fail(f"a {kind.__name__} on the stack", _describe(self._stack[-1]) if self._stack else "nothing")
        return self._stack[-1]

    def _set_items(self, target: dict, items: list[Any]) -> None:
        if len(items) % 2:
            self._fail("key-value pairs", f"{len(items)} items")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) not in (bytes, str, int):
                self._fail("a bytes, str or int dict key", _describe(key))
            target[key] = value

    # -- globals and the calls they stand for -------------------------------------
    def _global(self, module: Any, name: Any) -> _Global:
        if type(module) is not str or type(name) is not str:
            self._fail("a global named by two strings", f"{_describe(module)} and {_describe(name)}")
        kind = _GLOBALS.get((module, name))
        if kind is None:
            allowed = ", ".join(sorted({f"{m}.{n}" for m, n in _GLOBALS}))
            self._fail(f"only the globals {allowed}", f"global {module}.{name} (refused without importing it)")
        return _Global(kind, f"{module}.{name}")

    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global) or func.kind == "ndarray":
            self._fail("a call of numpy.dtype, _reconstruct, _frombuffer or _codecs.encode", _describe(func))
        if type(args) is not tuple:
            self._fail(f"a tuple of arguments for {func.qualname}", _describe(args))
        if func.kind == "dtype":
            return self._dtype(args)
        if func.kind == "reconstruct":
            if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
                self._fail("_reconstruct(numpy.ndarray, shape, typecode)", f"{len(args)} arguments")
            return ArrayBuilder()
        if func.kind == "frombuffer":
            if len(args) != 4 or args[3] not in ("C", "F"):
                self._fail("_frombuffer(buffer, dtype, shape, 'C' or 'F')", f"{len(args)} arguments")
            return self._array(args[0], args[1], args[2], args[3] == "F")
        if func.kind == "bytes":
            if args:
                self._fail("bytes() without arguments", f"{len(args)} arguments")
            return b""
        return self._encode(args)

    def _dtype(self, args: tuple) -> _DtypeSpec:
        args = tuple(_short_text(a) for a in args)
        if not 1 <= len(args) <= 3 or args[0] not in ARRAY_TYPE_CODES:
            got = repr(args[0])[:40] if args and type(args[0]) is str else _describe(args[0] if args else None)
            self._fail(f"numpy.dtype of a plain integer type code {ARRAY_TYPE_CODES}", f"type code {got}")
        return _DtypeSpec(args[0])

    def _encode(self, args: tuple) -> bytes:
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1", "latin_1"):
            self._fail("_codecs.encode(text, 'latin1')", f"{len(args)} arguments")
        self._created += len(args[0])
        if self._created > MAX_CREATED_BYTES:
            self._fail(f"at most {MAX_CREATED_BYTES} bytes created by _codecs.encode", f"{self._created}")
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            self._fail("latin-1 text for _codecs.encode", "characters above U+00FF")

    def _array(self, raw: Any, spec: Any, shape: Any, fortran: Any) -> np.ndarray:
        if type(raw) not in (bytes, bytearray):
            self._fail("array data as bytes", _describe(raw))
        if not isinstance(spec, _DtypeSpec):
            self._fail("a numpy.dtype of a plain integer type", _describe(spec))
        if type(shape) is not tuple or len(shape) > 2 or not all(type(s) is int and s >= 0 for s in shape):
            self._fail("a shape of at most 2 non-negative ints", _describe(shape))
        count = math.prod(shape)
        if count > MAX_ARRAY_ELEMENTS:
            self._fail(f"at most {MAX_ARRAY_ELEMENTS} array elements", f"shape {shape}")
        dt = spec.dtype
        if len(raw) != count * dt.itemsize:
            self._fail(f"{count * dt.itemsize} data bytes for shape {shape} of {dt}", f"{len(raw)}")
        return np.frombuffer(raw, dtype=dt, count=count).reshape(shape, order="F" if fortran else "C")

    def _build(self, state: Any) -> None:
        target = self._stack[-1] if self._stack else None
        if isinstance(target, _DtypeSpec):
            # (version, byte order, sub-array, names, fields, elsize, alignment, flags[, metadata]):
            # only the byte order is used; the dtype itself comes from the type code.
            ok = type(state) is tuple and len(state) in (8, 9) and state[0] in (3, 4)
            if not ok or _short_text(state[1]) not in ("<", ">", "|", "=") or state[2:5] != (None, None, None):
                self._fail("the state of a plain numpy dtype (no sub-array, names or fields)", _describe(state))
            target.byteorder = _short_text(state[1])
        elif isinstance(target, ArrayBuilder) and target.array is None:
            if type(state) is not tuple or len(state) not in (4, 5):
                self._fail("an ndarray state (version, shape, dtype, is_fortran, data)", _describe(state))
            shape, spec, fortran, raw = state[-4:]
            if type(fortran) not in (bool, int):
                self._fail("a bool is_fortran in the ndarray state", _describe(fortran))
            target.array = self._array(raw, spec, shape, bool(fortran))
        else:
            self._fail("BUILD on a numpy dtype or array", _describe(target))

    # -- the loop -----------------------------------------------------------------
    def run(self) -> Any:
        for _ in range(MAX_OPCODES):
            code = self._take(1)
            name = _OPCODE_NAMES.get(code, f"unknown {code!r}")
            if name == "STOP":
                if len(self._stack) != 1 or self._marks:
                    self._fail("one value at STOP", f"{len(self._stack)} values")
                return self._stack[0]
            step = _STEPS.get(name)
            if step is None:
                self._fail("a binary pickle (protocol 2 to 5) of plain values and integer arrays", f"opcode {name}")
            step(self)
        self._fail(f"at most {MAX_OPCODES} pickle opcodes", "more")


def _push(value_of):
    """A step that pushes ``value_of(interpreter)``."""
    return lambda self: self._stack.append(value_of(self))


def _signed(self: _Interpreter, size: int) -> int:
    return int.from_bytes(self._take(size), "little", signed=True)


def _proto(self: _Interpreter) -> None:
    version = self._uint(1)
    if not 2 <= version <= 5:
        self._fail("pickle protocol 2 to 5", f"protocol {version}")


def _binstring(self: _Interpreter) -> bytes:
    size = _signed(self, 4)
    if size < 0:
        self._fail("a non-negative BINSTRING length", str(size))
    return self._take(size)


def _memo_put(self: _Interpreter, index: int) -> None:
    if not self._stack:
        self._fail("a value to memoise", "an empty stack")
    self._memo[index] = self._stack[-1]


def _memo_get(self: _Interpreter, index: int) -> Any:
    if index not in self._memo:
        self._fail("a memoised value", f"unknown memo index {index}")
    return self._memo[index]


def _append(self: _Interpreter) -> None:
    value = self._pop()
    self._top(list).append(value)


def _appends(self: _Interpreter) -> None:
    items = self._pop_mark()
    self._top(list).extend(items)


def _setitem(self: _Interpreter) -> None:
    value, key = self._pop(), self._pop()
    self._set_items(self._top(dict), [key, value])


def _setitems(self: _Interpreter) -> None:
    items = self._pop_mark()
    self._set_items(self._top(dict), items)


def _tuple_of(n: int):
    def step(self: _Interpreter) -> None:
        if len(self._stack) - self._fence() < n:
            self._fail(f"{n} values for a tuple", "fewer")
        items = self._stack[len(self._stack) - n :]
        del self._stack[len(self._stack) - n :]
        self._stack.append(tuple(items))

    return step


def _stack_global(self: _Interpreter) -> None:
    name, module = self._pop(), self._pop()
    self._stack.append(self._global(module, name))


def _reduce(self: _Interpreter) -> None:
    args, func = self._pop(), self._pop()
    self._stack.append(self._call(func, args))


def _build(self: _Interpreter) -> None:
    self._build(self._pop())


_STEPS = {
    "PROTO": _proto,
    "FRAME": lambda self: self._uint(8),
    "MARK": lambda self: self._marks.append(len(self._stack)),
    "EMPTY_DICT": _push(lambda self: {}),
    "EMPTY_LIST": _push(lambda self: []),
    "EMPTY_TUPLE": _push(lambda self: ()),
    "NONE": _push(lambda self: None),
    "NEWTRUE": _push(lambda self: True),
    "NEWFALSE": _push(lambda self: False),
    "BININT": _push(lambda self: _signed(self, 4)),
    "BININT1": _push(lambda self: self._uint(1)),
    "BININT2": _push(lambda self: self._uint(2)),
    "LONG1": _push(lambda self: _signed(self, self._uint(1))),
    "SHORT_BINSTRING": _push(lambda self: self._take(self._uint(1))),
    "BINSTRING": _push(_binstring),
    "SHORT_BINBYTES": _push(lambda self: self._take(self._uint(1))),
    "BINBYTES": _push(lambda self: self._take(self._uint(4))),
    "BINBYTES8": _push(lambda self: self._take(self._uint(8))),
    "BYTEARRAY8": _push(lambda self: bytearray(self._take(self._uint(8)))),
    "SHORT_BINUNICODE": _push(lambda self: self._text(1)),
    "BINUNICODE": _push(lambda self: self._text(4)),
    "BINUNICODE8": _push(lambda self: self._text(8)),
    "BINPUT": lambda self: _memo_put(self, self._uint(1)),
    "LONG_BINPUT": lambda self: _memo_put(self, self._uint(4)),
    "MEMOIZE": lambda self: _memo_put(self, len(self._memo)),
    "BINGET": _push(lambda self: _memo_get(self, self._uint(1))),
    "LONG_BINGET": _push(lambda self: _memo_get(self, self._uint(4))),
    "APPEND": _append,
    "APPENDS": _appends,
    "SETITEM": _setitem,
    "SETITEMS": _setitems,
    "TUPLE": _push(lambda self: tuple(self._pop_mark())),
    "TUPLE1": _tuple_of(1),
    "TUPLE2": _tuple_of(2),
    "TUPLE3": _tuple_of(3),
    "GLOBAL": _push(lambda self: self._global(self._line(), self._line())),
    "STACK_GLOBAL": _stack_global,
    "REDUCE": _reduce,
    "BUILD": _build,
}


def load_pickle_subset(path: Path) -> Any:
    """Read one pickle file of the accepted subset (see the module docstring).

    Args:
        path: the file; at most :data:`MAX_FILE_BYTES` bytes.

    Returns:
        The unpickled value: plain Python values, :class:`ArrayBuilder` objects
        (whose ``array`` is a read-only NumPy integer array, or None if the file
        never gave its contents) and NumPy integer arrays from ``_frombuffer``.

    Raises:
        OSError: the file cannot be opened or read.
        PickleRefused: anything outside the subset or its bounds; the message
            names the file, what was expected and what came.
    """
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PickleRefused(f"{path}: expected a pickle of at most {MAX_FILE_BYTES} bytes, got {size} bytes")
    with open(path, "rb") as f:
        data = f.read(size + 1)  # read() allocates what it is asked for: ask for the stat size only
    if len(data) > size:
        raise PickleRefused(f"{path}: expected a file of {size} bytes (its size when opened), got more")
    return _Interpreter(data, path).run()
