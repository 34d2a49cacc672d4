"""Data loading, the leave-one-out split, negative sampling and raw-data preparation."""

import gzip
import json

import numpy as np
import pytest
import torch

from mstein_fast.data import (
    DataError,
    leave_one_out,
    left_pad,
    load_sequences,
    prepare_raw,
    sample_negatives,
    synthetic_sequences,
)


def write(tmp_path, text, name="seq.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_and_skip(tmp_path):
    path = write(tmp_path, "1 5 6 7 8\n2 3 4\n\n3 9 1 2\n4 1 2 3 4 5\n")
    data = load_sequences(path)
    assert data.user_ids == [1, 3, 4]
    assert data.skipped_users == 1
    assert data.n_items == 9
    assert data.items[0].tolist() == [5, 6, 7, 8]
    assert data.n_interactions == 4 + 3 + 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3 4\n2 x 3 4\n", r"seq\.txt:2: item id 'x' is not an integer"),
        ("1 2 3 4\nu 3 4 5\n", r"seq\.txt:2: user id 'u' is not an integer"),
        ("1 2 0 4\n", r"seq\.txt:1: item id 0 is not positive"),
        ("1 2 -3 4\n", r"seq\.txt:1: item id -3 is not positive"),
        ("1 2 3 4\n7\n", r"seq\.txt:2: expected 'user_id item_id item_id \.\.\.', got only a user id"),
        ("1 2 3 4\n1 5 6 7\n", r"seq\.txt:2: user 1 already appeared on line 1"),
        ("1 2.5 3 4\n", r"seq\.txt:1: item id '2\.5' is not an integer"),
        ("", r"seq\.txt: the file is empty"),
        ("\n  \n", r"seq\.txt: the file is empty"),
        ("1 2\n2 3 4\n", r"all 2 users have fewer than 3 interactions"),
    ],
)
def test_format_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_sequences(write(tmp_path, text))


def test_missing_directory_and_binary(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_sequences(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is a directory"):
        load_sequences(str(tmp_path))
    path = tmp_path / "bin.txt"
    path.write_bytes(b"1 2 3\xff\xfe\n")
    with pytest.raises(DataError, match="not a UTF-8 text file"):
        load_sequences(str(path))


def test_left_pad_truncates_and_pads():
    out = left_pad([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8, 9]), np.array([], dtype=np.int64)], 4)
    assert out.tolist() == [[0, 1, 2, 3], [6, 7, 8, 9], [0, 0, 0, 0]]


def test_leave_one_out_exact(tmp_path):
    items = list(range(1, 61))  # 60 items: training inputs longer than max_len
    path = write(tmp_path, "10 " + " ".join(map(str, items)) + "\n20 7 8 9\n21 3 1 4 1 5\n")
    split = leave_one_out(load_sequences(path), max_len=50)
    # user 10: test target 60, valid 59, training inputs items[:-3] -> targets items[1:-2]
    assert split.test_targets[0] == 60 and split.valid_targets[0] == 59
    assert split.train_inputs[0].tolist() == items[:-3][-50:]
    assert split.train_targets[0].tolist() == items[1:-2][-50:]
    assert split.valid_inputs[0].tolist() == items[:-2][-50:]
    assert split.test_inputs[0].tolist() == items[:-1][-50:]
    assert split.train_lengths[0] == 57 and split.train_full[0, -57:].tolist() == items[:-3]
    # user 20 (3 items): no training pair, valid 8 from [7], test 9 from [7, 8]
    assert split.train_inputs[1].sum() == 0 and split.train_targets[1].sum() == 0
    assert split.valid_inputs[1, -2:].tolist() == [0, 7] and split.valid_targets[1] == 8
    assert split.test_inputs[1, -3:].tolist() == [0, 7, 8] and split.test_targets[1] == 9
    # user 21: left padding, targets aligned with inputs
    assert split.train_inputs[2, -3:].tolist() == [0, 3, 1] and split.train_targets[2, -3:].tolist() == [0, 1, 4]
    rows, seen = split.test_seen.gather(torch.tensor([2]))
    assert seen.tolist() == [3, 1, 4, 1] and rows.tolist() == [0, 0, 0, 0]
    # popularity counts over s[:-2]
    assert split.item_counts[1] == 2 and split.item_counts[60] == 0


def test_negative_sampling_never_hits_user_items():
    data = synthetic_sequences(n_users=300, n_items=60, n_clusters=3, seed=1)
    split = leave_one_out(data, max_len=20)
    users = torch.arange(split.n_users)
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(split.train_targets, users, split.user_item_keys, split.n_items, g)
    assert ((neg == 0) == (split.train_targets == 0)).all()
    for u in range(split.n_users):
        assert not set(neg[u][neg[u] > 0].tolist()) & set(data.items[u].tolist())
    assert neg.max() <= split.n_items
    again = sample_negatives(split.train_targets, users, split.user_item_keys, split.n_items,
                             torch.Generator().manual_seed(0))
    assert torch.equal(neg, again)


def test_synthetic_is_deterministic_and_valid():
    a = synthetic_sequences(n_users=200, n_items=80, n_clusters=4, seed=3)
    b = synthetic_sequences(n_users=200, n_items=80, n_clusters=4, seed=3)
    c = synthetic_sequences(n_users=200, n_items=80, n_clusters=4, seed=4)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert all(np.array_equal(x, y) for x, y in zip(a.items, b.items))
    for s in a.items:
        assert len(s) >= 3 and s.min() >= 1 and s.max() <= 80 and len(set(s.tolist())) == len(s)


def test_prepare_json_gz_and_csv(tmp_path):
    # users a (6 items), b (5), c (1 item: dropped); items i0..i4 reviewed by a and b, x only by c
    rows = [("a", f"i{k}", 100 - k) for k in range(5)] + [("a", "i0", 200)]
    rows += [("b", f"i{k}", 10 + k) for k in range(5)] + [("c", "x", 5)]
    raw = tmp_path / "reviews.json.gz"
    with gzip.open(raw, "wt") as fh:
        for k, (u, i, t) in enumerate(rows):
            record = {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}
            # some Amazon dumps hold Python dict literals instead of JSON
            fh.write((repr(record) if k == 3 else json.dumps(record)) + "\n")
    out = tmp_path / "out" / "data.txt"
    stats = prepare_raw(str(raw), str(out), min_count=2)
    assert stats["users"] == 2 and stats["items"] == 5 and stats["interactions"] == 11
    lines = out.read_text().splitlines()
    # user a: time order i4 i3 i2 i1 i0 i0 -> ids 1..5 by first appearance
    assert lines[0] == "1 1 2 3 4 5 5"
    assert lines[1] == "2 5 4 3 2 1"
    assert (tmp_path / "out" / "data.item_map.tsv").read_text().splitlines()[1] == "i4\t1"
    assert (tmp_path / "out" / "data.user_map.tsv").read_text().splitlines()[1:] == ["a\t1", "b\t2"]
    csv = tmp_path / "ratings.csv"
    csv.write_text("".join(f"{u},{i},5.0,{t}\n" for u, i, t in rows))
    prepare_raw(str(csv), str(tmp_path / "csv.txt"), min_count=2, columns="user,item,rating,timestamp")
    assert (tmp_path / "csv.txt").read_text().splitlines() == lines
    assert load_sequences(str(out)).n_users == 2


def test_prepare_iterates_the_core(tmp_path):
    rows = ["u1,x,1,1", "u1,y,1,2", "u2,x,1,3", "u2,y,1,4", "u3,y,1,5", "u3,z,1,6"]
    csv = tmp_path / "r.csv"
    csv.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    stats = prepare_raw(str(csv), str(tmp_path / "o.txt"), min_count=2)
    # round 1 drops z (1 user); then u3 has 1 item and goes; then y has 2 users, x has 2: stable
    assert stats == {"users": 2, "items": 2, "interactions": 4, "raw_interactions": 6, "format": "csv",
                     "columns": "user,item,rating,timestamp"}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("r.json", '{"reviewerID": "a", "asin": "b"}\n', r"r\.json:1: missing time field"),
        ("r.json", "not json\n", r"r\.json:1: not a JSON object"),
        ("r.csv", "a,b,5,1\na,b\n", r"r\.csv:2: expected 4 columns"),
        ("r.csv", "a,b,5,1\na,b,5,later\n", r"r\.csv:2: timestamp 'later' is not a number"),
        ("r.csv", "a,b,5,1\n", r"no interactions left after the 5-core filter"),
        ("r.csv", "", r"holds no interactions"),
    ],
)
def test_prepare_errors(tmp_path, name, text, message):
    columns = "user,item,rating,timestamp" if name.endswith(".csv") else None
    with pytest.raises(DataError, match=message):
        prepare_raw(write(tmp_path, text, name), str(tmp_path / "o.txt"), columns=columns)
