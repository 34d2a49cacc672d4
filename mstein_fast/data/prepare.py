"""Raw interaction files -> a sequence file (``mstein-fast data prepare``; docs/protocol.md).

Input formats (``fmt``), each plain or gzipped (told by the magic bytes), read through
:mod:`mstein_fast.reader` (streamed; binary data, bad UTF-8, corrupt gzip, huge or non-finite
numbers, over-long lines and deep JSON end in one :class:`DataError` naming the file and line):

* ``json``: JSON lines with ``reviewerID``/``user_id``, ``asin``/``parent_asin`` and
  ``unixReviewTime``/``timestamp`` (Amazon 2014, 2018, 2023 dumps; Python dict literals too);
* ``csv``: comma-separated, columns as the header line names them, or as ``columns`` gives them,
  or, for a header-less 4-column file, detected from the values when the evidence is unambiguous
  (:func:`detect_amazon_order`), otherwise refused;
* ``movielens``: ``user::item::rating::timestamp`` (MovieLens ``ratings.dat``);
* ``inter``: RecBole atomic files, tab-separated under a typed header
  (``user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float``).

``auto`` picks by the name (``.csv``, ``.json``/``.jsonl``, ``.inter``, ignoring ``.gz``), then by
the first line (``{``: json; a typed header: inter; ``::`` separators: movielens; else csv).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from array import array
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from mstein_fast.reader import (
    DataError,
    JSONSyntaxError,
    file_label,
    finite_float,
    open_text_lines,
    parse_json_line,
    show,
    sniff,
)
from mstein_fast.writer import write_files_atomic

FORMATS = ("auto", "json", "csv", "movielens", "inter")

_JSON_KEYS = {  # field -> accepted keys (2014/2018 Amazon dumps, then the 2023 one)
    "user": ("reviewerID", "user_id"),
    "item": ("asin", "parent_asin"),
    "time": ("unixReviewTime", "timestamp"),
}
# column names a header line may use (compared in lower case; RecBole's ":type" suffix removed)
HEADER_NAMES = {
    "user": ("user", "reviewerid", "user_id", "userid"),
    "item": ("item", "asin", "item_id", "itemid", "parent_asin"),
    "timestamp": ("timestamp", "time", "unixreviewtime"),
}
_FIELDS = ("user", "item", "timestamp")
_INTER_HEADER = re.compile(r"[^\s:]+:(token|token_seq|float|float_seq)")
# Amazon ids: ASINs are 10 characters, 'B0' and 8 more letters/digits, or an ISBN-10; reviewer ids
# start with 'A' and are 12-28 upper-case letters and digits (2014/2018: 12-21, 2023: 28)
_ASIN = re.compile(r"B0[0-9A-Z]{8}|[0-9]{9}[0-9X]")
_REVIEWER = re.compile(r"A[0-9A-Z]{11,27}")
SAMPLE_ROWS = 1000  # rows looked at to detect the column order of a header-less CSV
EVIDENCE_SHARE = 0.95  # share of the sampled rows that must show the detected order


@dataclass(frozen=True)
class Columns:
    """Where the fields are in a delimited row: ``width`` columns, user/item/timestamp positions."""

    user: int
    item: int
    timestamp: int
    width: int
    names: tuple[str, ...]

    def describe(self) -> str:
        """The columns as ``--columns`` would name them (``user,item,rating,timestamp``)."""
        return ",".join(self.names)


def parse_columns(spec: str) -> Columns:
    """Parse ``--columns``: comma-separated names, ``user``, ``item`` and ``timestamp`` once each,
    any other name (``rating``, ``skip``) for a column that is ignored."""
    names = tuple(n.strip().lower() for n in spec.split(","))
    positions = {}
    for pos, n in enumerate(names):
        if not n:
            raise DataError(f"--columns {spec!r}: an empty column name (name a column to ignore 'skip', say)")
        if n in _FIELDS:
            if n in positions:
                raise DataError(f"--columns {spec!r}: {n} is named twice")
            positions[n] = pos
    missing = [f for f in _FIELDS if f not in positions]
    if missing:
        raise DataError(f"--columns {spec!r}: no {' and no '.join(missing)} column (name user, item and "
                        "timestamp, e.g. --columns item,user,rating,timestamp)")
    return Columns(positions["user"], positions["item"], positions["timestamp"], len(names), names)


def columns_from_header(fields: list[str]) -> Optional[Columns]:
    """The :class:`Columns` a header line names, or None when it names none of them (data, not a
    header). Raises :class:`DataError` for a header naming some but not all three."""
    names = [f.strip().lower().split(":")[0] for f in fields]
    positions = {}
    for field, accepted in HEADER_NAMES.items():
        found = [pos for pos, n in enumerate(names) if n in accepted]
        if found:
            positions[field] = found[0]
    if not positions:
        return None
    missing = [f for f in _FIELDS if f not in positions]
    if missing:
        raise DataError(f"the header line names no {' and no '.join(missing)} column ("
                        + "; ".join(f"{f}: {'/'.join(HEADER_NAMES[f])}" for f in missing) + "); pass --columns")
    labels = tuple(next((f for f, p in positions.items() if p == pos), n if re.fullmatch(r"\w+", n) else "-")
                   for pos, n in enumerate(names))
    return Columns(positions["user"], positions["item"], positions["timestamp"], len(names), labels)


def detect_amazon_order(rows: list[list[str]]) -> Optional[tuple[Columns, str]]:
    """The column order of header-less 4-column Amazon rating rows, from the values, or None.

    Amazon 2014 "ratings only" CSVs are ``user,item,rating,timestamp``, 2018 ones
    ``item,user,rating,timestamp``. The order is detected only when the evidence is clear: on at
    least :data:`EVIDENCE_SHARE` of the rows one of the first two columns holds an ASIN
    (``B0`` + 8 letters/digits, or an ISBN-10) and the other a reviewer id (``A`` + 11 to 27
    upper-case letters/digits), and no row shows the opposite order. Returns the columns and a
    sentence saying why, or None (ambiguous: the caller refuses).
    """
    n = len(rows)
    if not n:
        return None
    item_first = sum(1 for r in rows if _ASIN.fullmatch(r[0]) and _REVIEWER.fullmatch(r[1]))
    user_first = sum(1 for r in rows if _REVIEWER.fullmatch(r[0]) and _ASIN.fullmatch(r[1]))
    for count, other, names, said in (
        (item_first, user_first, ("item", "user", "rating", "timestamp"), "ASINs first, reviewer ids second"),
        (user_first, item_first, ("user", "item", "rating", "timestamp"), "reviewer ids first, ASINs second"),
    ):
        if other == 0 and count >= EVIDENCE_SHARE * n:
            cols = Columns(names.index("user"), names.index("item"), 3, 4, names)
            return cols, f"{said} on {count} of {n} sampled lines"
    return None


def _check_id(value, field: str, path: str, lineno: int) -> str:
    """``value`` as an id: a non-empty string (or an integer) of printable characters."""
    if type(value) is str and value and value.isprintable():  # the common case, checked at once
        return value
    where = f"{file_label(path)}:{lineno}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: the {field} id {show(value)} is not a string or an integer")
    text = str(value)
    if not text:
        raise DataError(f"{where}: empty {field} id")
    if not text.isprintable():
        raise DataError(f"{where}: the {field} id {show(text)} holds a tab or a line break (or another "
                        "unprintable character); the id maps cannot hold it")
    return text


def detect_format(raw_path: str) -> str:
    """The format ``auto`` stands for: by the name, then by the first line (see the module doc)."""
    base = os.path.basename(raw_path).lower().removesuffix(".gz")
    if base.endswith(".csv"):
        return "csv"
    if base.endswith((".json", ".jsonl")):
        return "json"
    if base.endswith(".inter"):
        return "inter"
    first = sniff(raw_path, "a raw interaction file").first()
    if first.lstrip().startswith("{"):
        return "json"
    if _is_typed_header(first.split("\t")):
        return "inter"
    if len(first.split("::")) >= 3:
        return "movielens"
    return "csv"


def _is_typed_header(fields: list[str]) -> bool:
    return bool(fields) and all(_INTER_HEADER.fullmatch(f.strip()) for f in fields)


# -- reading ----------------------------------------------------------------------------------------

def _json_records(path: str) -> Iterator[tuple[str, str, float]]:
    with open_text_lines(path, "a raw interaction file", decompress=True) as lines:
        for lineno, line in lines:
            if not line.strip():
                continue
            try:  # bounds first (deep nesting, huge numbers, NaN), then the syntax
                obj = parse_json_line(line, path, lineno, python_literals=line.lstrip()[:1] == "{")
            except JSONSyntaxError:
                raise DataError(f"{file_label(path)}:{lineno}: not a JSON object") from None
            if not isinstance(obj, dict):
                raise DataError(f"{file_label(path)}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            row = []
            for field, keys in _JSON_KEYS.items():
                value = next((obj[k] for k in keys if k in obj), None)
                if value is None:
                    raise DataError(f"{file_label(path)}:{lineno}: missing {field} field (one of {', '.join(keys)})")
                row.append(value)
            yield (_check_id(row[0], "user", path, lineno), _check_id(row[1], "item", path, lineno),
                   finite_float(row[2], path, lineno, "time"))


def _rows(path: str, fmt: str) -> Iterator[tuple[int, list[str]]]:
    """``(lineno, fields)`` of the non-blank rows of a delimited file."""
    with open_text_lines(path, "a raw interaction file", decompress=True) as lines:
        if fmt == "csv":
            reader = csv.reader(line for _, line in lines)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise DataError(f"{file_label(path)}:{reader.line_num}: not a CSV line ({err})") from None
                if row and any(c.strip() for c in row):
                    yield reader.line_num, row
        else:
            sep = "::" if fmt == "movielens" else "\t"
            for lineno, line in lines:
                if line.strip():
                    yield lineno, line.split(sep)


class _Delimited:
    """The records of a csv, movielens or inter file: finds the columns, then checks each row."""

    def __init__(self, path: str, fmt: str, columns: Optional[Columns], notify: Callable[[str], None]) -> None:
        self.path, self.fmt, self.columns, self.notify = path, fmt, columns, notify
        self.source = "--columns" if columns else None

    def record(self, lineno: int, row: list[str]) -> tuple[str, str, float]:
        """One row's ``(user, item, timestamp)``, checked."""
        cols = self.columns
        if len(row) != cols.width:
            raise DataError(f"{file_label(self.path)}:{lineno}: expected {cols.width} columns {cols.describe()} "
                            f"({self.source}), got {len(row)}")
        return (_check_id(row[cols.user].strip(" \t"), "user", self.path, lineno),
                _check_id(row[cols.item].strip(" \t"), "item", self.path, lineno),
                finite_float(row[cols.timestamp], self.path, lineno, "timestamp"))

    def _header(self, lineno: int, row: list[str]) -> bool:
        """Whether the first row is a header; sets the columns from it where none were given."""
        try:
            named = columns_from_header(row)
        except DataError as err:
            raise DataError(f"{file_label(self.path)}:{lineno}: {err}") from None
        if named is not None:
            if self.columns is None:
                self.columns, self.source = named, f"as the header on line {lineno} names them"
            return True
        if self.fmt == "inter" and _is_typed_header(row):
            if self.columns is None:
                raise DataError(f"{file_label(self.path)}:{lineno}: the header names no user_id, item_id or "
                                "timestamp column; pass --columns")
            return True
        if self.columns is not None and len(row) == self.columns.width:
            try:  # a header with other names: its timestamp is not a number
                finite_float(row[self.columns.timestamp], self.path, lineno, "timestamp")
            except DataError:
                return True
        return False

    def __iter__(self) -> Iterator[tuple[str, str, float]]:
        rows = _rows(self.path, self.fmt)
        first = next(rows, None)
        if first is None:
            return
        if self.columns is None and self.fmt == "movielens":
            self.columns = Columns(0, 1, 3, 4, ("user", "item", "rating", "timestamp"))
            self.source = "MovieLens user::item::rating::timestamp"
        if not self._header(*first):
            if self.columns is None and self.fmt == "inter":
                raise DataError(f"{file_label(self.path)}:{first[0]}: expected a RecBole header such as "
                                "'user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float' "
                                "(or pass --columns)")
            rows = _chain(first, rows)
        if self.columns is None:
            rows = self._detect(rows)
        for lineno, row in rows:
            yield self.record(lineno, row)

    def _detect(self, rows: Iterator[tuple[int, list[str]]]) -> Iterator[tuple[int, list[str]]]:
        """Detect the order of a header-less 4-column CSV from its first rows, or refuse."""
        sample = []
        for lineno, row in rows:
            where = f"{file_label(self.path)}:{lineno}"
            if len(row) != 4:
                raise DataError(f"{where}: expected 4 columns user,item,rating,timestamp or item,user,rating,"
                                f"timestamp, got {len(row)} (name the columns with --columns)")
            if not sample:
                try:
                    finite_float(row[3], self.path, lineno, "timestamp")
                except DataError:
                    raise DataError(f"{where}: a header line that does not name the user, item and timestamp "
                                    "columns (user/reviewerID/user_id, item/asin/item_id/parent_asin, "
                                    "timestamp/time/unixReviewTime): rename them or pass --columns") from None
            row = [c.strip(" \t") for c in row]
            _check_id(row[0], "first column's", self.path, lineno)
            _check_id(row[1], "second column's", self.path, lineno)
            finite_float(row[3], self.path, lineno, "timestamp")
            sample.append((lineno, row))
            if len(sample) >= SAMPLE_ROWS:
                break
        if not sample:
            return
        found = detect_amazon_order([r for _, r in sample])
        if found is None:
            raise DataError(
                f"{file_label(self.path)}: no header line names the columns and their order is ambiguous "
                "(Amazon 2014 rating CSVs are user,item,rating,timestamp, 2018 ones item,user,rating,timestamp): "
                "pass --columns user,item,rating,timestamp or --columns item,user,rating,timestamp")
        self.columns, why = found
        self.source = "detected"
        self.notify(f"{file_label(self.path)}: no header line; read as {self.columns.describe()} ({why}); "
                    "pass --columns to override")
        yield from sample
        yield from rows


def _chain(first, rest):
    yield first
    yield from rest


def _stderr_note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# -- prepare ------------------------------------------------------------------------------------

def prepare_raw(raw_path: str, out_path: str, min_count: int = 5, fmt: str = "auto",
                columns: Optional[str] = None, notify: Optional[Callable[[str], None]] = None) -> dict:
    """Turn raw interactions (Amazon reviews, MovieLens, RecBole) into a sequence file (docs/protocol.md).

    Reads ``raw_path`` in format ``fmt`` (see the module doc; ``columns``: the ``--columns``
    spec of a delimited file); keeps the ``min_count``-core (users and items with at least
    ``min_count`` interactions, filtered repeatedly until stable); sorts each user's items by time
    (ties keep file order); maps users to 1.. in order of first appearance in the file and items
    to 1.. in order of first appearance in the output. Writes ``out_path`` and, beside it,
    ``<stem>.user_map.tsv`` and ``<stem>.item_map.tsv`` (``raw_id<TAB>id``), as a set
    (:func:`mstein_fast.writer.write_files_atomic`: all three or, on a failure, none changes).
    ``notify`` receives notes such as a detected column order (default: ``note: ...`` on stderr).
    Returns counts.
    """
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    cols = parse_columns(columns) if columns else None
    if not os.path.isfile(raw_path):
        raise DataError(f"{file_label(raw_path)}: no such file")
    stem = out_path.removesuffix(".txt")
    outputs = [out_path, f"{stem}.user_map.tsv", f"{stem}.item_map.tsv"]
    for target in outputs:
        if os.path.isdir(target):
            raise DataError(f"-o {file_label(out_path)}: {file_label(target)} is a directory; name a file to write")
        if os.path.exists(target) and os.path.samefile(target, raw_path):
            raise DataError(f"-o {file_label(out_path)}: {file_label(target)} is the input file; "
                            "choose another output name")
    if fmt == "auto":
        fmt = detect_format(raw_path)
    if cols is not None and fmt == "json":
        raise DataError("--columns names the columns of a delimited file (csv, movielens, inter), not of JSON lines")
    if fmt == "json":
        records: Iterator[tuple[str, str, float]] = _json_records(raw_path)
        delimited = None
    else:
        delimited = _Delimited(raw_path, fmt, cols, notify or _stderr_note)
        records = iter(delimited)

    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    u_codes, i_codes, times = array("q"), array("q"), array("d")
    for user, item, t in records:
        u_codes.append(user_index.setdefault(user, len(user_index)))
        i_codes.append(item_index.setdefault(item, len(item_index)))
        times.append(t)
    if not u_codes:
        raise DataError(f"{file_label(raw_path)}: the file holds no interactions")
    user_names = np.array(list(user_index), dtype=object)
    item_names = np.array(list(item_index), dtype=object)
    del user_index, item_index
    u = np.frombuffer(u_codes, dtype=np.int64)
    i = np.frombuffer(i_codes, dtype=np.int64)
    t = np.frombuffer(times, dtype=np.float64)
    n_raw = len(u)
    order = np.arange(len(u))
    while True:  # iterated k-core
        keep = (np.bincount(u, minlength=len(user_names))[u] >= min_count) & (
            np.bincount(i, minlength=len(item_names))[i] >= min_count)
        if keep.all():
            break
        u, i, t, order = u[keep], i[keep], t[keep], order[keep]
    if len(u) == 0:
        raise DataError(f"{file_label(raw_path)}: no interactions left after the {min_count}-core filter")
    first_seen = np.full(len(user_names), len(order), dtype=np.int64)
    np.minimum.at(first_seen, u, order)
    srt = np.lexsort((order, t, first_seen[u]))
    u, i = u[srt], i[srt]
    _, user_id = np.unique(first_seen[u], return_inverse=True)  # 0.. in order of first appearance
    item_first = np.full(len(item_names), len(i), dtype=np.int64)
    np.minimum.at(item_first, i, np.arange(len(i)))
    used_items = np.flatnonzero(item_first < len(i))
    item_rank = np.empty(len(item_names), dtype=np.int64)
    item_rank[used_items[np.argsort(item_first[used_items])]] = np.arange(1, len(used_items) + 1)
    item_id = item_rank[i]
    bounds = np.flatnonzero(np.diff(user_id)) + 1
    lines = [f"{k + 1} " + " ".join(map(str, chunk)) for k, chunk in enumerate(np.split(item_id, bounds))]
    user_raw = user_names[u[np.r_[0, bounds]]]
    item_raw = item_names[used_items[np.argsort(item_first[used_items])]]
    texts = ["\n".join(lines) + "\n",
             "raw_id\tid\n" + "".join(f"{name}\t{k + 1}\n" for k, name in enumerate(user_raw)),
             "raw_id\tid\n" + "".join(f"{name}\t{k + 1}\n" for k, name in enumerate(item_raw))]
    try:
        out_dir = os.path.dirname(out_path)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        write_files_atomic(dict(zip(outputs, texts)))
    except OSError as err:
        raise DataError(f"cannot write {file_label(err.filename or out_path)}: {err.strerror or err}") from None
    stats = {"users": len(lines), "items": len(used_items), "interactions": len(u), "raw_interactions": n_raw,
             "format": fmt}
    if delimited is not None:
        stats["columns"] = delimited.columns.describe()
    return stats
