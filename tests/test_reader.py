"""The guarded reader of untrusted files (mstein_fast.reader), the atomic writer (mstein_fast.writer),
and what they fix in ``data prepare`` and ``load_sequences``; the input formats of ``data prepare``."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mstein_fast import reader, writer
from mstein_fast.cli import main
from mstein_fast.data import DataError, load_sequences, prepare_raw
from mstein_fast.reader import (
    file_label,
    finite_float,
    open_text_lines,
    parse_json_line,
    read_json,
    sniff,
)
from mstein_fast.writer import write_files_atomic, write_text_atomic

ODD_SEPARATORS = ["\x1e", "\x1c", "\x1d", "\x0c", "\x0b", "\x85", "\u2028", "\u2029"]


def cli(capsys, *argv):
    """Run the CLI in-process: ``(code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert all(line.startswith("note: ") for line in lines[:-1]), err
    for fragment in fragments:
        assert fragment in lines[-1], err


def review_lines(n_users=12, n_items=7, per_user=5):
    """JSON review records: every user reviews ``per_user`` items (a 5-core for the defaults)."""
    return "".join(json.dumps({"reviewerID": f"u{u}", "asin": f"i{(u + k) % n_items}", "unixReviewTime": k}) + "\n"
                   for u in range(n_users) for k in range(per_user))


# -- the reader -------------------------------------------------------------------------------------

def test_lines_split_only_on_newline(tmp_path):
    text = "\ufeffa b\r\n" + "c".join(ODD_SEPARATORS) + "\n\nlast\rline"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    with open_text_lines(str(path)) as lines:
        got = list(lines)
    assert got == [(1, "a b"), (2, "c".join(ODD_SEPARATORS)), (3, ""), (4, "last\rline")]


def test_bom_only_skipped_on_the_first_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("x\n\ufeffy\n".encode())
    assert [line for _, line in open_text_lines(str(path))] == ["x", "\ufeffy"]


@pytest.mark.parametrize("content", [b"", b"1 2 3", b"\xef\xbb\xbf1 2 3\r\n4 5 6\n", b"a\n" * 100_000 + b"tail"])
def test_digest_is_the_hash_of_the_whole_file(tmp_path, content):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    digest = hashlib.sha1()
    for _ in open_text_lines(str(path), digest=digest):
        pass
    assert digest.hexdigest() == hashlib.sha1(content).hexdigest()


@pytest.mark.parametrize("content, message", [
    (b"1 2 3\n\x00\x01\x02", r"t\.bin: not a UTF-8 text file \(a NUL byte at byte 6"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", r"t\.bin: not a UTF-8 text file"),
    (b"1 2 3\xff\xfe\n", r"t\.bin: not a UTF-8 text file \(invalid start byte at byte 5\)"),
    (b"ok\n" * 5000 + b"caf\xe9\n", r"t\.bin:5001: not a UTF-8 text file"),
    (b"ok\n" * 5000 + b"a\x00b\n", r"t\.bin:5001: not a UTF-8 text file \(a NUL byte"),
])
def test_binary_and_bad_utf8_are_refused(tmp_path, content, message):
    path = tmp_path / "t.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(open_text_lines(str(path)))
    with pytest.raises(DataError, match=message):
        sniff(str(path), max_lines=10_000)


def test_line_length_is_bounded(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"short\n" + b"x" * 5000 + b"\nshort\n")
    with pytest.raises(DataError, match=r"t\.txt:2: line longer than 1000 bytes"):
        list(open_text_lines(str(path), max_line_bytes=1000))
    assert len(list(open_text_lines(str(path), max_line_bytes=5001))) == 3


def test_not_a_regular_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        open_text_lines(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="is a directory, expected a thing"):
        open_text_lines(str(tmp_path), "a thing")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="not a regular file"):
        open_text_lines(str(tmp_path / "fifo"))


def test_gzip_is_read_and_its_damage_reported(tmp_path):
    text = "".join(f"line {k}\n" for k in range(20_000))
    packed = gzip.compress(text.encode())
    (tmp_path / "ok.gz").write_bytes(packed)
    with open_text_lines(str(tmp_path / "ok.gz"), decompress=True) as lines:
        assert lines.compressed and [line for _, line in lines] == text.split("\n")[:-1]
    (tmp_path / "trunc.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"trunc\.gz: cannot decompress after line \d+ .*truncated or corrupt"):
        list(open_text_lines(str(tmp_path / "trunc.gz"), decompress=True))
    (tmp_path / "head.gz").write_bytes(packed[:5])  # cut inside the gzip header: through the first peek
    with pytest.raises(DataError, match=r"head\.gz: cannot decompress"):
        sniff(str(tmp_path / "head.gz"))
    # without decompression a gzip file is binary data, with a hint
    with pytest.raises(DataError, match="not a UTF-8 text file.*gzip"):
        list(open_text_lines(str(tmp_path / "ok.gz")))


def corrupt_gzip(packed: bytes) -> bytes:
    """``packed`` with its deflate body damaged (not truncated)."""
    body = bytearray(packed)
    for k in range(20, min(len(body) - 8, 60)):
        body[k] ^= 0xA5
    return bytes(body)


def test_corrupt_gzip_body(tmp_path):
    packed = gzip.compress(review_lines().encode())
    (tmp_path / "bad.gz").write_bytes(corrupt_gzip(packed))
    with pytest.raises(DataError, match=r"bad\.gz: "):
        list(open_text_lines(str(tmp_path / "bad.gz"), decompress=True))


@pytest.mark.parametrize("value", ["1_0", "\u0663", "nan", "NaN", "-inf", "Infinity", "1e400", "9" * 400, "9" * 5000,
                                   "", "0x10", "1,5", True, None, [1], 2**5000, float("nan"), float("inf")])
def test_finite_float_refuses(value):
    with pytest.raises(DataError, match=r"^f\.csv:7: ts "):
        finite_float(value, "f.csv", 7, "ts")


@pytest.mark.parametrize("value, expected", [("12", 12.0), (" 3.5 ", 3.5), ("-1e3", -1000.0), (".5", 0.5),
                                             (1_600_000_000, 1.6e9), (2.5, 2.5), ("1" * 100, float("1" * 100))])
def test_finite_float_accepts(value, expected):
    assert finite_float(value, "f", 1, "ts") == expected


@pytest.mark.parametrize("text, message", [
    ('{"a": [1, 2,\n NaN]}', r"c\.json:2: NaN is not a finite number"),
    ('{"a":\n\n -Infinity}', r"c\.json:3: -Infinity is not a finite number"),
    ('{"a": 1e400}', r"c\.json:1: number '1e400' is not a finite number"),
    ('{"a": ' + "7" * 5000 + "}", r"c\.json:1: number .* has more than 100 digits"),
    ('{"a": ' + "7" * 400 + ".5}", r"c\.json:1: number .* has more than 100 digits"),
    ('{"s": "NaN", "a":\n NaN}', r"c\.json:2: NaN"),
    ("[" * 100_000 + "]" * 100_000, r"c\.json:1: JSON nested too deeply \(more than 64 levels\)"),
    ('{\n"a": \n{"b": 1,}}', r"c\.json:3: not valid JSON"),
    ("", r"c\.json:1: not valid JSON"),
])
def test_read_json_refuses(tmp_path, text, message):
    path = tmp_path / "c.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_json(str(path))


def test_read_json_accepts_bom_and_strings_with_brackets(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(("\ufeff" + json.dumps({"s": "[" * 500, "n": [1.5, -2, "NaN"]})).encode())
    assert read_json(str(path)) == {"s": "[" * 500, "n": [1.5, -2, "NaN"]}
    path.write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        read_json(str(path))
    path.write_text("[" + "1," * 20 + "1]")
    with pytest.raises(DataError, match=r"c\.json: larger than 10 bytes"):
        read_json(str(path), max_bytes=10)


def test_parse_json_line_and_python_literals():
    assert parse_json_line('{"a": 1}', "m.jsonl", 3) == {"a": 1}
    with pytest.raises(DataError, match=r"m\.jsonl:3: not valid JSON"):
        parse_json_line("{'a': 1}", "m.jsonl", 3)
    assert parse_json_line("{'a': 1}", "m.jsonl", 3, python_literals=True) == {"a": 1}
    for bad in ["{'a': 1e999}", "{'a': " + "(" * 200 + ")" * 200 + "}", "{'a': __import__('os')}",
                "{'a': 9" + "9" * 400 + "}"]:
        with pytest.raises(DataError, match=r"^m\.jsonl:3: "):
            parse_json_line(bad, "m.jsonl", 3, python_literals=True)


def test_messages_stay_on_one_line(tmp_path):
    path = tmp_path / "a\nb.txt"
    path.write_text("1 2 3 x\u2028y\n")
    with pytest.raises(DataError) as info:
        load_sequences(str(path))
    assert "\n" not in str(info.value) and "\u2028" not in str(info.value)
    assert file_label(str(path)).endswith("a\\nb.txt")


# -- load_sequences through the reader ----------------------------------------------------------------

@pytest.mark.parametrize("sep", ODD_SEPARATORS)
def test_sequence_line_with_odd_separator_is_not_split(tmp_path, sep):
    path = tmp_path / "s.txt"
    path.write_text(f"1 2 3 4{sep}5 6 7 8\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"s\.txt:1: item id '4.*5' is not an integer"):
        load_sequences(str(path))


def test_sequence_fingerprint_is_the_hash_of_the_file(tmp_path):
    raw = "\ufeff1 5 6 7 8\r\n2 3 4\n\n3\t9 1 2\n4 1 2 3 4 5".encode()
    path = tmp_path / "s.txt"
    path.write_bytes(raw)
    data = load_sequences(str(path))
    assert data.user_ids == [1, 3, 4] and data.fingerprint == hashlib.sha1(raw).hexdigest()


@pytest.mark.parametrize("token", ["9" * 25, "9" * 5000, "-" + "9" * 5000])
def test_sequence_huge_ids(tmp_path, token):
    path = tmp_path / "s.txt"
    path.write_text(f"1 2 3 4\n2 3 {token} 5\n")
    with pytest.raises(DataError, match=r"s\.txt:2: item id .* (is larger than|is not positive)") as info:
        load_sequences(str(path))
    assert len(str(info.value)) < 300


def test_sequences_are_streamed(tmp_path):
    # 32 MB, mostly blank lines: reading the file whole (as text, then split) would peak far above this bound
    path = tmp_path / "big.txt"
    with open(path, "wb") as fh:
        fh.write(b"1 1 2 3\n")
        fh.write((b" " * 4095 + b"\n") * 8192)
        fh.write(b"2 2 3 4\n")
    tracemalloc.start()
    try:
        data = load_sequences(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.user_ids == [1, 2]
    assert peak < 4 * 2**20, peak


# -- data prepare through the reader ------------------------------------------------------------------

def test_prepare_refuses_an_executable(tmp_path, capsys):
    if not os.path.isfile("/bin/ls"):
        pytest.skip("no /bin/ls")
    code, _, err = cli(capsys, "data", "prepare", "/bin/ls", "-o", tmp_path / "prep.txt")
    assert_one_error_line(code, err, "/bin/ls: not a UTF-8 text file")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["blob", "blob.dat", "blob.csv", "blob.json", "blob.inter"])
def test_prepare_refuses_binary_files(tmp_path, capsys, name):
    (tmp_path / name).write_bytes(bytes(random.Random(3).randrange(128, 256) for _ in range(4000)))
    code, _, err = cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, f"{name}: not a UTF-8 text file")


@pytest.mark.parametrize("name", ["bad.json.gz", "bad.gz"])
def test_prepare_corrupt_gzip_body(tmp_path, capsys, name):
    (tmp_path / name).write_bytes(corrupt_gzip(gzip.compress(review_lines().encode())))
    code, _, err = cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, f"{name}: ")


def test_prepare_truncated_gzip_through_the_sniffing_path(tmp_path, capsys):
    packed = gzip.compress(review_lines().encode())
    (tmp_path / "t.gz").write_bytes(packed[: len(packed) // 2])
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "t.gz", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "t.gz: cannot decompress", "truncated or corrupt")


@pytest.mark.parametrize("name, text, message", [
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": ' + "9" * 400 + "}\n", "r.json:1: number"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": ' + "9" * 5000 + "}\n", "r.json:1: number"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": NaN}\n', "r.json:1: NaN is not a finite"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": 1e999}\n', "r.json:1: number '1e999'"),
    ("r.json", "{'reviewerID': 'a', 'asin': 'b', 'unixReviewTime': 1e999}\n", "r.json:1: number inf"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": "nan"}\n', "r.json:1: time 'nan' is not a finite"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "unixReviewTime": true}\n', "r.json:1: time True is not a number"),
    ("r.json", '{"reviewerID": ["a"], "asin": "b", "unixReviewTime": 1}\n', "r.json:1: the user id ['a']"),
    ("r.csv", "user,item,rating,timestamp\na,b,1," + "9" * 400 + "\n", "r.csv:2: timestamp"),
    ("r.csv", "user,item,rating,timestamp\na,b,1," + "9" * 5000 + "\n", "r.csv:2: timestamp"),
    ("r.csv", "user,item,rating,timestamp\na,b,1,nan\n", "r.csv:2: timestamp 'nan' is not a finite number"),
    ("r.csv", "user,item,rating,timestamp\na,b,1,inf\n", "r.csv:2: timestamp 'inf' is not a finite number"),
    ("r.csv", "user,item,rating,timestamp\na,b,1,1e400\n", "r.csv:2: timestamp '1e400' is not a finite number"),
    ("r.csv", "user,item,rating,timestamp\n,b,1,1\n", "r.csv:2: empty user id"),
])
def test_prepare_refuses_bad_numbers_and_ids(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    code, _, err = cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt", "--min-count", "1")
    assert_one_error_line(code, err, message)


def amazon_rows(order="item,user", n_users=12, n_items=7, per_user=5):
    """Header-less Amazon rating rows with real-looking ids: ASINs B0..., reviewer ids A...."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            user, item = f"A{u:03d}XYZ{u * 7919 % 10**6:06d}Q", f"B0{(u + k) % n_items:08d}"
            rows.append(f"{item},{user},5.0,{1_500_000_000 + k}" if order == "item,user"
                        else f"{user},{item},5.0,{1_500_000_000 + k}")
    return "\n".join(rows) + "\n"


def test_prepare_skips_a_bom_in_a_csv(tmp_path, capsys):
    (tmp_path / "r.csv").write_bytes(("\ufeff" + amazon_rows("user,item")).encode())
    code, out, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt")
    assert code == 0, err
    assert json.loads(out)["users"] == 12
    assert "\ufeff" not in (tmp_path / "o.user_map.tsv").read_text(encoding="utf-8")


@pytest.mark.parametrize("sep", ODD_SEPARATORS)
def test_prepare_line_with_odd_separator_is_not_split(tmp_path, capsys, sep):
    rows = "".join(f"u{u},i{(u + k) % 7},5.0,{k}\n" for u in range(12) for k in range(5))
    (tmp_path / "r.csv").write_text("user,item,rating,timestamp\n" + rows.replace("u3,", f"u3{sep}x,", 1),
                                    encoding="utf-8")
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "r.csv:17: the user id", "tab or a line break")


# -- output files as a set ----------------------------------------------------------------------------

def prepare_twice(tmp_path):
    raw1, raw2 = tmp_path / "a.json", tmp_path / "b.json"
    raw1.write_text(review_lines())
    raw2.write_text(review_lines(n_users=20, n_items=9))
    out = tmp_path / "out" / "seq.txt"
    prepare_raw(str(raw1), str(out))
    files = [out, tmp_path / "out" / "seq.user_map.tsv", tmp_path / "out" / "seq.item_map.tsv"]
    return raw2, out, files


@pytest.mark.parametrize("fail_at", [2, 3])
def test_prepare_outputs_are_replaced_as_a_set(tmp_path, monkeypatch, fail_at):
    raw2, out, files = prepare_twice(tmp_path)
    before = [f.read_bytes() for f in files]
    real, calls = writer._write_all, []

    def full_disk(fd, data):
        calls.append(len(data))
        if len(calls) == fail_at:
            real(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(writer, "_write_all", full_disk)
    with pytest.raises(DataError, match=r"cannot write .*seq\..*: No space left on device"):
        prepare_raw(str(raw2), str(out))
    assert [f.read_bytes() for f in files] == before
    assert sorted(os.listdir(out.parent)) == sorted(f.name for f in files)  # no temporary left
    monkeypatch.setattr(writer, "_write_all", real)
    prepare_raw(str(raw2), str(out))
    assert [f.read_bytes() for f in files] != before


def test_writer_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    write_text_atomic(str(link), "new")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"


def test_writer_keeps_the_mode_and_refuses_directories(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    target.chmod(0o640)
    write_files_atomic({str(target): "new", str(tmp_path / "u.txt"): b"bytes"})
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640
    assert (tmp_path / "u.txt").read_bytes() == b"bytes"
    with pytest.raises(IsADirectoryError):
        write_files_atomic({str(tmp_path / "v.txt"): "x", str(tmp_path): "y"})
    assert not (tmp_path / "v.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["t.txt", "u.txt"]


# -- the formats of data prepare ----------------------------------------------------------------------

@pytest.mark.parametrize("order", ["item,user", "user,item"])
def test_prepare_detects_the_amazon_column_order(tmp_path, capsys, order):
    (tmp_path / "r.csv").write_text(amazon_rows(order))
    code, out, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "auto.txt")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["users"] == 12 and stats["items"] == 7 and stats["columns"] == f"{order},rating,timestamp"
    assert err.startswith("note: ") and f"read as {order},rating,timestamp" in err and len(err.splitlines()) == 1
    user_map = (tmp_path / "auto.user_map.tsv").read_text().split("\n")[1:-1]
    assert all(line.split("\t")[0].startswith("A") for line in user_map)
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "given.txt",
                       "--columns", f"{order},rating,timestamp")
    assert code == 0 and err == ""
    for suffix in (".txt", ".user_map.tsv", ".item_map.tsv"):
        assert (tmp_path / f"auto{suffix}").read_bytes() == (tmp_path / f"given{suffix}").read_bytes()


@pytest.mark.parametrize("rows", [
    "".join(f"u{u},i{(u + k) % 7},5.0,{k}\n" for u in range(8) for k in range(5)),  # no evidence at all
    amazon_rows("item,user") + "A12345678901,B000000001,5.0,1\n",  # one line the other way round
    amazon_rows("item,user").replace("B0", "C0"),  # ASIN-like but not ASINs
])
def test_prepare_refuses_an_ambiguous_column_order(tmp_path, capsys, rows):
    (tmp_path / "r.csv").write_text(rows)
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "r.csv: no header line names the columns", "--columns")
    assert not (tmp_path / "o.txt").exists()


def test_prepare_columns_option(tmp_path, capsys):
    rows = "".join(f"x,i{(u + k) % 7},{k},u{u}\n" for u in range(8) for k in range(5))
    (tmp_path / "r.csv").write_text(rows)
    code, out, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt",
                         "--columns", "skip,item,timestamp,user")
    assert code == 0, err
    assert json.loads(out)["users"] == 8
    assert (tmp_path / "o.user_map.tsv").read_text().split("\n")[1] == "u0\t1"
    for spec, message in [("user,item", "no timestamp column"), ("user,user,item,timestamp", "user is named twice"),
                          ("user,,item,timestamp", "an empty column name")]:
        code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt", "--columns", spec)
        assert_one_error_line(code, err, f"--columns {spec!r}: {message}")
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt",
                       "--columns", "user,item,timestamp")
    assert_one_error_line(code, err, "r.csv:1: expected 3 columns user,item,timestamp (--columns), got 4")


def test_prepare_header_names_the_columns(tmp_path, capsys):
    rows = "".join(f"i{(u + k) % 7},5,u{u},{k}\n" for u in range(8) for k in range(5))
    (tmp_path / "r.csv").write_text("asin,overall,reviewerID,unixReviewTime\n" + rows)
    code, out, err = cli(capsys, "data", "prepare", tmp_path / "r.csv", "-o", tmp_path / "o.txt")
    assert code == 0, err
    assert json.loads(out)["columns"] == "item,overall,user,timestamp"
    (tmp_path / "h.csv").write_text("asin,overall,unixReviewTime\n" + rows)
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "h.csv", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "h.csv:1: the header line names no user column")
    (tmp_path / "g.csv").write_text("product,score,person,when\n" + rows)
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "g.csv", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "g.csv:1: a header line that does not name", "--columns")


def movielens_rows():
    return "".join(f"{u}::{(u + k) % 7 + 1}::4::{978300000 + k}\n" for u in range(1, 9) for k in range(5))


@pytest.mark.parametrize("name, argv", [("ratings.dat", []), ("ratings.txt", ["--format", "movielens"]),
                                        ("ratings.dat.gz", [])])
def test_prepare_movielens(tmp_path, capsys, name, argv):
    data = movielens_rows().encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    code, out, err = cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt", *argv)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["format"] == "movielens" and stats["users"] == 8 and stats["items"] == 7
    assert (tmp_path / "o.user_map.tsv").read_text().split("\n")[1] == "1\t1"
    first_user_items = [(1 + k) % 7 + 1 for k in range(5)]
    item_map = dict(line.split("\t")[::-1] for line in (tmp_path / "o.item_map.tsv").read_text().split("\n")[1:-1])
    line = (tmp_path / "o.txt").read_text().split("\n")[0].split()
    assert [int(item_map[i]) for i in line[1:]] == first_user_items


def test_prepare_movielens_errors(tmp_path, capsys):
    (tmp_path / "ratings.dat").write_text(movielens_rows() + "9::1::4\n")
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "ratings.dat", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "ratings.dat:41: expected 4 columns user,item,rating,timestamp")


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def inter_rows():
    return "".join(f"u{u}\ti{(u + k) % 7}\t4.0\t{k}.0\n" for u in range(8) for k in range(5))


@pytest.mark.parametrize("name, argv", [("Beauty.inter", []), ("beauty.txt", []),
                                        ("beauty.tsv", ["--format", "inter"])])
def test_prepare_recbole_inter(tmp_path, capsys, name, argv):
    (tmp_path / name).write_text(INTER_HEADER + inter_rows())
    code, out, err = cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt", *argv)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["format"] == "inter" and stats["users"] == 8 and stats["columns"] == "user,item,rating,timestamp"


def test_prepare_recbole_inter_columns_by_name(tmp_path, capsys):
    header = "timestamp:float\titem_id:token\treview:token_seq\tuser_id:token\n"
    rows = "".join(f"{k}\ti{(u + k) % 7}\tgood stuff\tu{u}\n" for u in range(8) for k in range(5))
    (tmp_path / "x.inter").write_text(header + rows)
    code, out, err = cli(capsys, "data", "prepare", tmp_path / "x.inter", "-o", tmp_path / "o.txt")
    assert code == 0, err
    assert (tmp_path / "o.user_map.tsv").read_text().split("\n")[1] == "u0\t1"
    (tmp_path / "y.inter").write_text("user_id:token\titem_id:token\trating:float\n" + inter_rows())
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "y.inter", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "y.inter:1: the header line names no timestamp column")
    (tmp_path / "z.inter").write_text(inter_rows())
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "z.inter", "-o", tmp_path / "o.txt")
    assert_one_error_line(code, err, "z.inter:1: expected a RecBole header")


def test_prepare_columns_not_for_json(tmp_path, capsys):
    (tmp_path / "r.json").write_text(review_lines())
    code, _, err = cli(capsys, "data", "prepare", tmp_path / "r.json", "-o", tmp_path / "o.txt",
                       "--columns", "user,item,timestamp")
    assert_one_error_line(code, err, "--columns names the columns of a delimited file")


# -- property-based: malformed input of every kind ----------------------------------------------------

ODD_TEXT = st.lists(st.sampled_from(list("0123456789abAB,:;\t \r\n.-+e_xnaif{}[]\"'") + ODD_SEPARATORS
                                    + ["\ufeff", "\x00", "\u0663", "NaN", "::", "9" * 400, "1" * 5000]),
                    max_size=200).map("".join)
NAMES = ["r.csv", "r.json", "r.jsonl", "r.inter", "ratings.dat", "r", "r.csv.gz", "r.gz", "r.txt"]


@st.composite
def malformed_files(draw):
    kind = draw(st.sampled_from(["bytes", "text", "records", "clean", "gzip"]))
    if kind == "clean":  # well-formed (mostly accepted): the checks must not refuse good data
        rows = draw(st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["i1", "i2", "i3"]),
                                       st.integers(0, 10**10).map(str)), min_size=1, max_size=30))
        fmt = draw(st.sampled_from(["csv", "movielens", "inter", "json"]))
        head = {"csv": "user,item,rating,timestamp\n", "inter": INTER_HEADER}.get(fmt, "")
        if fmt == "json":
            body = "".join(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": int(t)}) + "\n"
                           for u, i, t in rows)
        else:
            sep = {"csv": ",", "movielens": "::", "inter": "\t"}[fmt]
            body = "".join(sep.join([u, i, "5", t]) + "\r\n" for u, i, t in rows)
        data = (draw(st.sampled_from(["", "\ufeff"])) + head + body).encode()
    elif kind == "bytes":
        data = draw(st.binary(max_size=400))
    elif kind == "text":
        data = draw(ODD_TEXT).encode("utf-8")
    else:
        rows = draw(st.lists(st.tuples(st.sampled_from(["u1", "u2", "A1234567890123", "\ufeffu1", "u\x1e3", ""]),
                                       st.sampled_from(["i1", "i2", "B000000001", "0123456789", "i\u20283"]),
                                       st.sampled_from(["1", "nan", "inf", "1e400", "9" * 400, "-5", "x", "1_0"])),
                             min_size=1, max_size=30))
        sep = draw(st.sampled_from([",", "::", "\t", "\x1e"]))
        header = draw(st.sampled_from(["", "user,item,rating,timestamp\n", INTER_HEADER, "\ufeff"]))
        data = (header + "".join(sep.join([u, i, "5", t]) + draw(st.sampled_from(["\n", "\r\n", "\u2028", "\x85"]))
                                 for u, i, t in rows)).encode("utf-8")
    if kind == "gzip" or draw(st.booleans()) and kind == "records":
        packed = gzip.compress(data)
        cut = draw(st.sampled_from(["whole", "truncated", "corrupt"]))
        data = packed if cut == "whole" else packed[: len(packed) // 2] if cut == "truncated" else corrupt_gzip(packed)
    return draw(st.sampled_from(NAMES)), data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_files(), st.sampled_from([[], ["--format", "csv"], ["--format", "json"], ["--format", "movielens"],
                                           ["--format", "inter"], ["--columns", "item,user,-,timestamp"]]))
def test_fuzz_prepare_and_load_fail_cleanly(case, argv):
    name, data = case
    root = tempfile.mkdtemp()
    try:
        src, out = os.path.join(root, "in"), os.path.join(root, "out")
        os.mkdir(src)
        raw = os.path.join(src, name)
        with open(raw, "wb") as fh:
            fh.write(data)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["data", "prepare", raw, "-o", os.path.join(out, "o.txt"), "--min-count", "1", *argv])
        err = stderr.getvalue()
        assert code in (0, 2), err
        assert "Traceback" not in err
        lines = err.splitlines()
        if code == 2:
            assert lines and lines[-1].startswith("error: ") and err.endswith("\n"), err
            assert all(line.startswith("note: ") for line in lines[:-1]), err
        else:
            assert all(line.startswith("note: ") for line in lines), err
        assert os.listdir(src) == [name] and sorted(os.listdir(root)) in (["in"], ["in", "out"])
        if os.path.isdir(out):
            assert set(os.listdir(out)) <= {"o.txt", "o.user_map.tsv", "o.item_map.tsv"}
            if code == 0:  # what prepare writes, load reads (it may hold only users too short to split)
                try:
                    load_sequences(os.path.join(out, "o.txt"))
                except DataError as exc:
                    assert "fewer than 3 interactions" in str(exc)
        try:
            data_read = load_sequences(raw)
        except DataError as exc:
            assert "\n" not in str(exc)
        else:
            assert data_read.fingerprint == hashlib.sha1(data).hexdigest()
        assert os.listdir(src) == [name]
    finally:
        shutil.rmtree(root)


def test_reader_imports_nothing_heavy():
    for module in (reader, writer):
        source = open(module.__file__, encoding="utf-8").read()
        assert "import torch" not in source and "import numpy" not in source
