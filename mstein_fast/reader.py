"""The one place the package reads files that a user or another process could have written.

Every such file (data files, raw review dumps, and in time configs, metrics and space files) is
read through this module, so that malformed input of any kind ends in one :class:`DataError`
(a :class:`~mstein_fast.errors.UserError`: the CLI prints ``error: <message>`` and exits 2) with a
one-line message naming the file and, where there is one, the line; never in a traceback, a
``MemoryError`` or a silently wrong value.

The rules, the same for every reader here:

* **Lines** are split on ``"\\n"`` only, one trailing ``"\\r"`` is stripped (CRLF files), and a
  UTF-8 byte-order mark at the start of the first line is skipped. ``str.splitlines`` is never
  used: it also splits on ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028 and U+2029, which
  would turn one line of data into several records.
* **Text** is UTF-8, strictly. A NUL byte (in the first block or on any line) or an invalid
  UTF-8 sequence ends reading with ``<file>[:<line>]: not a UTF-8 text file (...)``.
* **Bounds**: a line holds at most :data:`MAX_LINE_BYTES` bytes (16 MiB: far more than any record
  of the supported formats, small enough that a file without line breaks cannot exhaust memory);
  JSON nests at most :data:`MAX_JSON_DEPTH` levels deep; a number has at most :data:`MAX_DIGITS`
  digits (Python's ``int()`` refuses more than 4300 digits with a ``ValueError``, and ``float()``
  of a 400-digit ``int`` raises ``OverflowError``); a whole-file JSON document holds at most
  :data:`MAX_JSON_BYTES` bytes.
* **Numbers** meant to be finite are finite: JSON's ``NaN``/``Infinity`` constants are refused,
  and so are ``nan``, ``inf`` and numbers that overflow to infinity in text fields.
* **Streaming**: :func:`open_text_lines` reads a line at a time (a 20 GB file needs memory for one
  line, not for the file), optionally feeding a ``hashlib`` digest with every byte read, so that
  a fingerprint of the whole file comes for free and is byte-identical to hashing the file at once.
* **gzip**: with ``decompress=True`` a file starting with the gzip magic bytes is decompressed on
  the fly; a truncated or corrupt stream (``EOFError``, ``zlib.error``, ``gzip.BadGzipFile``,
  ``OSError``) is a :class:`DataError` too.

The API:

* :func:`open_text_lines` ``(path, what=..., decompress=False, digest=None)``: an iterator of
  ``(lineno, line)`` (a context manager too: ``with open_text_lines(p) as lines: ...``);
* :func:`sniff` ``(path, ...)``: the first lines of a file, for format detection (a :class:`Head`);
* :func:`read_json` ``(path, what=..., max_depth=...)``: one whole-file JSON document (config
  files, ``best.json``, search spaces);
* :func:`parse_json_line` ``(text, path, lineno, python_literals=False)``: one JSON value of a
  JSON-lines file (``metrics.jsonl``, review dumps; optionally Python dict literals);
  :class:`JSONSyntaxError` (a :class:`DataError`) tells a syntax error from a refused value;
* :func:`finite_float` ``(value, path, lineno, what)``: a number from a text field or a JSON value,
  finite and of bounded size;
* :func:`check_regular_file` ``(path, what)``: the checks every reader does before opening;
* :func:`sha1_of_file` ``(path)``: a file's fingerprint, read in chunks;
* :func:`show` ``(value)`` and :func:`file_label` ``(path)``: a value and a path fit for a one-line
  message (quoted, shortened, escaped).

A typical loop::

    with open_text_lines(path, "a sequence file", digest=hashlib.sha1()) as lines:
        for lineno, line in lines:
            ...  # raise DataError(f"{file_label(path)}:{lineno}: ...") for a bad record

All of them raise :class:`DataError` only. Callers that want another :class:`UserError` subclass
(a config error, say) catch it and re-raise with the same message. This module imports nothing
of the package but :mod:`mstein_fast.errors`, and nothing outside the standard library.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import math
import os
import re
import stat
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from mstein_fast.errors import UserError

__all__ = [
    "MAX_DIGITS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_LINE_BYTES",
    "DataError",
    "Head",
    "JSONSyntaxError",
    "TextLines",
    "check_regular_file",
    "file_label",
    "finite_float",
    "open_text_lines",
    "parse_json_line",
    "read_json",
    "sha1_of_file",
    "show",
    "sniff",
]

MAX_LINE_BYTES = 16 * 2**20  # one line of any text file: 16 MiB
MAX_JSON_DEPTH = 64  # nesting of JSON arrays and objects
MAX_DIGITS = 100  # digits of one number (integer or float mantissa)
MAX_JSON_BYTES = 64 * 2**20  # a whole-file JSON document (configs, results): 64 MiB
FIRST_BLOCK = 8192  # bytes looked at to tell text from binary data before reading lines

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, OSError)
# a plain decimal number: what a data file's numeric field may hold (no "nan", "inf", "1_0", "٣")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class DataError(UserError, ValueError):
    """A data file is missing or malformed; the message names the file and, where known, the line.

    Raised by every reader of :mod:`mstein_fast.reader` and re-exported as
    ``mstein_fast.data.DataError``.
    """


def show(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened to about ``limit`` characters: a token fit for a one-line message.

    ``repr`` escapes line breaks, control characters and U+2028/U+2029, so the result is one line.
    """
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} {'characters' if isinstance(value, str) else 'bytes'})"
    text = repr(value)
    return text if len(text) <= limit + 20 else text[: limit + 20] + "..."


def file_label(path: str) -> str:
    """The path as messages print it: as is, or with escapes where it holds unprintable characters
    (a file name with a line break must not break the one-line message)."""
    path = os.fspath(path)
    return path if path.isprintable() else path.encode("unicode_escape", "backslashreplace").decode("ascii")


def _where(path: str, lineno: Optional[int]) -> str:
    return f"{file_label(path)}:{lineno}" if lineno else file_label(path)


def check_regular_file(path: str, what: str = "a text file") -> None:
    """Raise :class:`DataError` unless ``path`` is an existing regular file (following symlinks).

    A directory, a FIFO or a device (``/dev/zero``: read without end) is refused with a message
    saying ``what`` was expected.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{file_label(path)}: no such file") from None
    except OSError as err:
        raise DataError(f"{file_label(path)}: cannot read ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{file_label(path)}: is a directory, expected {what}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{file_label(path)}: not a regular file, expected {what}")


def _check_text_block(path: str, block: bytes, compressed: bool) -> None:
    """Refuse binary data: a NUL byte, or bytes that are not UTF-8, in the first block."""
    gz = " after gzip decompression" if compressed else ""
    nul = block.find(b"\x00")
    if nul >= 0:
        hint = "; a gzip file? it is read only where the format allows it" if block[:2] == _GZIP_MAGIC else ""
        raise DataError(f"{file_label(path)}: not a UTF-8 text file (a NUL byte at byte {nul}{gz}: binary data{hint})")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(block, final=False)  # a cut sequence at the end is fine
    except UnicodeDecodeError as err:
        hint = " (gzip data: decompress it first)" if block[:2] == _GZIP_MAGIC else ""
        raise DataError(f"{file_label(path)}: not a UTF-8 text file ({err.reason} at byte {err.start}{gz})"
                        f"{hint}") from None


class TextLines:
    """The lines of a text file, streamed: iterate for ``(lineno, line)``; see :func:`open_text_lines`.

    ``lineno`` counts from 1 and every line is yielded (blank ones too), so line numbers are the
    file's. ``line`` has no ``"\\n"``, no trailing ``"\\r"`` and, on line 1, no byte-order mark.
    The file is closed at the end, on an error, on :meth:`close` and on leaving a ``with`` block.
    """

    def __init__(self, path: str, what: str = "a text file", *, decompress: bool = False,
                 digest: Any = None, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._fh = self._raw = None
        self.compressed = False
        check_regular_file(path, what)
        self.path = os.fspath(path)
        self.digest = digest
        self.max_line_bytes = max_line_bytes
        self.lineno = 0
        self.offset = 0  # bytes read so far (after decompression)
        try:
            raw = open(path, "rb")
        except OSError as err:
            raise DataError(f"{file_label(path)}: cannot read ({err.strerror or err})") from None
        try:
            first = self._guard(lambda: raw.peek(FIRST_BLOCK)[:FIRST_BLOCK])
            self.compressed = decompress and first[:2] == _GZIP_MAGIC
            if self.compressed:
                if digest is not None:
                    raise ValueError("digest is fed the bytes read; with decompression it would hash the "
                                     "decompressed text, not the file: hash the file separately")
                self._fh = gzip.GzipFile(fileobj=raw, mode="rb")
                self._raw = raw
                first = self._guard(lambda: self._fh.peek(FIRST_BLOCK)[:FIRST_BLOCK])
            else:
                self._fh, self._raw = raw, None
            _check_text_block(self.path, first, self.compressed)
        except BaseException:
            self.close()
            raw.close()
            raise

    def _guard(self, read):
        """Run ``read()``, mapping I/O and decompression errors to :class:`DataError`."""
        try:
            return read()
        except _GZIP_ERRORS as err:
            self._fail(err)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return self

    def __next__(self) -> tuple[int, str]:
        fh = self._fh
        if fh is None:
            raise StopIteration
        try:
            data = fh.readline(self.max_line_bytes + 1)
        except _GZIP_ERRORS as err:
            self._fail(err)
        if not data:
            self.close()
            raise StopIteration
        self.lineno += 1
        if len(data) > self.max_line_bytes:
            self.close()
            raise DataError(f"{self._where()}: line longer than {self.max_line_bytes} bytes "
                            "(not a text file of records?)")
        if self.digest is not None:
            self.digest.update(data)
        start = self.offset
        self.offset += len(data)
        if b"\x00" in data:
            self.close()
            raise DataError(f"{self._where()}: not a UTF-8 text file (a NUL byte at byte {start + data.index(0)}: "
                            "binary data)")
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as err:
            self.close()
            raise DataError(f"{self._where()}: not a UTF-8 text file ({err.reason} at byte "
                            f"{start + err.start})") from None
        if line[-1:] == "\n":
            line = line[:-2] if line[-2:-1] == "\r" else line[:-1]
        elif line[-1:] == "\r":
            line = line[:-1]
        if self.lineno == 1 and line[:1] == "\ufeff":
            line = line[1:]
        return self.lineno, line

    def _where(self) -> str:
        return f"{file_label(self.path)}:{self.lineno}"

    def _fail(self, err: BaseException):
        """Close, and raise :class:`DataError` for an I/O or decompression error ``err``."""
        self.close()
        detail = str(err).split("\n")[0] or type(err).__name__
        where = f" after line {self.lineno}" if self.lineno else ""
        if self.compressed:
            raise DataError(f"{file_label(self.path)}: cannot decompress{where} ({detail}): a truncated or corrupt "
                            ".gz file") from None
        raise DataError(f"{file_label(self.path)}: cannot read{where} ({detail})") from None

    def close(self) -> None:
        """Close the file (idempotent)."""
        for fh in (getattr(self, "_fh", None), getattr(self, "_raw", None)):
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass
        self._fh = self._raw = None

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def open_text_lines(path: str, what: str = "a text file", *, decompress: bool = False, digest: Any = None,
                    max_line_bytes: int = MAX_LINE_BYTES) -> TextLines:
    """Open ``path`` for streaming its lines: iterate the result for ``(lineno, line)``.

    Args:
        what: what the file should be, for messages (``"is a directory, expected <what>"``).
        decompress: read a gzip file (told by its magic bytes, not its name) decompressed.
        digest: a ``hashlib`` object, fed every byte of the file as it is read (only without
            decompression): after the last line, ``digest.hexdigest()`` equals the hash of the
            whole file.
        max_line_bytes: the longest line accepted.

    Checks at once that ``path`` is a regular file holding text (a NUL byte or invalid UTF-8 in the
    first :data:`FIRST_BLOCK` bytes is refused); every line is checked while iterating. Raises
    :class:`DataError` only. Use it in a ``with`` block, or iterate to the end, to close the file.
    """
    return TextLines(path, what, decompress=decompress, digest=digest, max_line_bytes=max_line_bytes)


@dataclass
class Head:
    """The first lines of a file, for format detection (see :func:`sniff`)."""

    path: str
    lines: list[str] = field(default_factory=list)  # first lines as read (BOM and "\r" removed)
    compressed: bool = False  # gzip-compressed on disk
    complete: bool = False  # the whole file is in ``lines``

    def first(self) -> str:
        """The first line that is not blank (``""`` when there is none)."""
        return next((line for line in self.lines if line.strip()), "")


def sniff(path: str, what: str = "a text file", *, decompress: bool = True, max_lines: int = 20) -> Head:
    """The first ``max_lines`` lines of ``path`` through the same checks as :func:`open_text_lines`.

    Never raises ``UnicodeDecodeError``, ``EOFError`` or ``zlib.error``: binary data, invalid
    UTF-8 and a truncated or corrupt gzip stream in those lines are :class:`DataError`.
    """
    with open_text_lines(path, what, decompress=decompress) as lines:
        head = Head(os.fspath(path), compressed=lines.compressed)
        for _, line in lines:
            head.lines.append(line)
            if len(head.lines) >= max_lines:
                break
        else:
            head.complete = True
    return head


def finite_float(value: Any, path: str, lineno: Optional[int], what: str) -> float:
    """``value`` (a text field, or an ``int``/``float`` from JSON) as a finite float.

    Text must be a plain decimal number (``12``, ``-1.5``, ``3e9``; not ``nan``, ``inf``, ``1_0``
    or non-ASCII digits) of at most :data:`MAX_DIGITS` digits, surrounding spaces allowed.
    Raises :class:`DataError` ``"<file>:<line>: <what> <value> is not a number"`` (or ``... is not
    a finite number``, ``... has more than 100 digits``).
    """
    if isinstance(value, str):
        text = value.strip(" \t")
        if text.isdigit() and text.isascii() and len(text) <= MAX_DIGITS:  # the common case: 1234567890
            return float(text)
        if not _NUMBER.fullmatch(text):
            if text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                raise DataError(f"{_where(path, lineno)}: {what} {show(value)} is not a finite number")
            raise DataError(f"{_where(path, lineno)}: {what} {show(value)} is not a number")
        if sum(c.isdigit() for c in re.split("[eE]", text)[0]) > MAX_DIGITS:
            raise DataError(f"{_where(path, lineno)}: {what} {show(value)} has more than {MAX_DIGITS} digits")
        number = float(text)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{_where(path, lineno)}: {what} {show(value)} is not a number")
    elif isinstance(value, int):
        if value.bit_length() > 1024:  # float() would raise OverflowError (and str() may refuse)
            raise DataError(f"{_where(path, lineno)}: {what} of {value.bit_length()} bits is not a finite number")
        number = float(value)
    else:
        number = value
    if not math.isfinite(number):
        raise DataError(f"{_where(path, lineno)}: {what} {show(value)} is not a finite number")
    return number


# -- JSON -----------------------------------------------------------------------------------------

class JSONSyntaxError(DataError):
    """The text is not JSON (a syntax error), as opposed to JSON refused by a bound: a caller may
    then try another syntax or say what it expected."""


class _Refused(ValueError):
    """Raised inside the JSON decoder's hooks; carries the token to locate it in the text."""

    def __init__(self, token: str, message: str) -> None:
        super().__init__(message)
        self.token = token


def _refuse_constant(token: str):
    raise _Refused(token, f"{token} is not a finite number")


def _json_int(token: str) -> int:
    if len(token.lstrip("-")) > MAX_DIGITS:
        raise _Refused(token, f"number {show(token)} has more than {MAX_DIGITS} digits")
    return int(token)


def _json_float(token: str) -> float:
    mantissa = re.split("[eE]", token)[0]
    if sum(c.isdigit() for c in mantissa) > MAX_DIGITS:
        raise _Refused(token, f"number {show(token)} has more than {MAX_DIGITS} digits")
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(token, f"number {show(token)} is not a finite number (too large)")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_int=_json_int, parse_float=_json_float)


def _depth_exceeded(text: str, max_depth: int) -> Optional[int]:
    """The offset in ``text`` where JSON nesting first exceeds ``max_depth`` (None if it never does)."""
    if text.count("[") + text.count("{") <= max_depth:  # the common case: no need to look closer
        return None
    bare = _JSON_STRING.sub(lambda m: " " * len(m.group()), text)  # brackets inside strings do not count
    depth = 0
    for m in re.finditer(r"[\[\]{}]", bare):
        depth += 1 if m.group() in "[{" else -1
        if depth > max_depth:
            return m.start()
    return None


def _lineno_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _locate(text: str, token: str) -> Optional[int]:
    """The offset of the first occurrence of the bare token ``token`` outside JSON strings."""
    bare = _JSON_STRING.sub(lambda m: " " * len(m.group()), text)
    m = re.search(r"(?<![\w.+-])" + re.escape(token) + r"(?![\w.])", bare)
    return m.start() if m else None


def _loads(text: str, path: str, lineno: Optional[int], max_depth: int) -> Any:
    """Decode one JSON document; ``lineno`` is the line of ``text`` in its file (None: text is the file)."""
    def where(pos: Optional[int]) -> str:
        if lineno is not None:
            return _where(path, lineno)
        return _where(path, _lineno_of(text, pos) if pos is not None else None)

    deep = _depth_exceeded(text, max_depth)
    if deep is not None:
        raise DataError(f"{where(deep)}: JSON nested too deeply (more than {max_depth} levels)")
    try:
        return _DECODER.decode(text)
    except _Refused as err:
        raise DataError(f"{where(_locate(text, err.token))}: {err}") from None
    except json.JSONDecodeError as err:
        line = lineno if lineno is not None else err.lineno
        raise JSONSyntaxError(f"{_where(path, line)}: not valid JSON ({err.msg}, column {err.colno})") from None
    except RecursionError:  # cannot happen below max_depth, but never a traceback
        raise DataError(f"{where(None)}: JSON nested too deeply") from None
    except (ValueError, OverflowError) as err:
        raise DataError(f"{where(None)}: not valid JSON ({str(err).split(chr(10))[0] or type(err).__name__})") from None


MAX_LITERAL_BYTES = 2**20  # a Python literal line (parsed into an AST: ~100x its size in memory)
_PY_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', re.DOTALL)


def _check_literal(value: Any, path: str, lineno: int, depth: int = 0) -> None:
    """Refuse non-finite floats and over-long integers anywhere in a parsed Python literal."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{_where(path, lineno)}: number {show(value)} is not a finite number")
    if isinstance(value, int) and value.bit_length() > MAX_DIGITS * 10 // 3:
        raise DataError(f"{_where(path, lineno)}: a number has more than {MAX_DIGITS} digits")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_literal(k, path, lineno, depth + 1)
            _check_literal(v, path, lineno, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _check_literal(v, path, lineno, depth + 1)


def _python_literal(text: str, path: str, lineno: int, max_depth: int) -> Any:
    """A Python literal (``{'key': 'value'}``: what some dumps hold instead of JSON), bounded."""
    import ast
    import warnings

    if len(text) > MAX_LITERAL_BYTES:
        raise DataError(f"{_where(path, lineno)}: not valid JSON (and too long to read as a Python literal)")
    if sum(text.count(c) for c in "[{(") > max_depth:
        bare = _PY_STRING.sub(lambda m: " " * len(m.group()), text)
        depth = 0
        for m in re.finditer(r"[\[\](){}]", bare):
            depth += 1 if m.group() in "[({" else -1
            if depth > max_depth:
                raise DataError(f"{_where(path, lineno)}: nested too deeply (more than {max_depth} levels)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences in the strings
        value = ast.literal_eval(text.strip())
    _check_literal(value, path, lineno)
    return value


def parse_json_line(text: str, path: str, lineno: int, max_depth: int = MAX_JSON_DEPTH, *,
                    python_literals: bool = False) -> Any:
    """One JSON value from line ``lineno`` of a JSON-lines file ``path`` (e.g. ``metrics.jsonl``).

    Bounded like :func:`read_json` (depth, digits, no NaN/Infinity); raises :class:`DataError`
    ``"<file>:<line>: ..."``. With ``python_literals``, a line that is not JSON but a Python
    literal (some review dumps hold ``repr`` of dicts) is read with ``ast.literal_eval``, with the
    same bounds and at most :data:`MAX_LITERAL_BYTES` long.
    """
    try:
        return _loads(text, path, lineno, max_depth)
    except JSONSyntaxError as err:
        if not python_literals:
            raise
        try:
            return _python_literal(text, path, lineno, max_depth)
        except DataError:
            raise
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
            raise err from None


def read_json(path: str, what: str = "a JSON file", *, max_depth: int = MAX_JSON_DEPTH,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in ``path`` (a config file, ``best.json``, a search space).

    UTF-8 (a byte-order mark is skipped), at most ``max_bytes`` bytes, nested at most
    ``max_depth`` levels, numbers of at most :data:`MAX_DIGITS` digits, no ``NaN``/``Infinity``
    (a float overflowing to infinity, ``1e400``, is refused too). Raises :class:`DataError`
    naming the file and the line.
    """
    check_regular_file(path, what)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as err:
        raise DataError(f"{file_label(path)}: cannot read ({err.strerror or err})") from None
    if len(raw) > max_bytes:
        raise DataError(f"{file_label(path)}: larger than {max_bytes} bytes, expected {what}")
    _check_text_block(path, raw[:FIRST_BLOCK], False)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{file_label(path)}:{line}: not a UTF-8 text file ({err.reason} at byte "
                        f"{err.start})") from None
    if "\x00" in text:
        line = _lineno_of(text, text.index("\x00"))
        raise DataError(f"{file_label(path)}:{line}: not a UTF-8 text file (a NUL byte: binary data)")
    return _loads(text.removeprefix("\ufeff"), path, None, max_depth)


def sha1_of_file(path: str, chunk: int = 2**20) -> str:
    """The sha1 hex digest of the file ``path``, read in chunks (:class:`DataError` if unreadable)."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"{file_label(path)}: cannot read ({err.strerror or err})") from None
    return digest.hexdigest()
