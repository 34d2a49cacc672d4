"""Augmentation invariants, ItemCF-IUF on a hand-computed example, the model's item similarity."""

import math

import numpy as np
import pytest
import torch

from mstein_fast import reference
from mstein_fast.augment import CROP, INSERT, LONG_OPS, MASK, REORDER, SHORT_OPS, SUBSTITUTE, Augmenter, itemcf_iuf_topk
from mstein_fast.config import TrainConfig
from mstein_fast.data import left_pad
from mstein_fast.models import build_model

N_ITEMS = 100
MAX_LEN = 50


@pytest.fixture
def augmenter():
    g = torch.Generator().manual_seed(0)
    # a similarity table whose entries are easy to recognise: item i -> i+1, i+2, i+3 (mod N, from 1)
    sim = 1 + (torch.arange(N_ITEMS + 1).unsqueeze(1) + torch.arange(1, 4)) % N_ITEMS
    aug = Augmenter(TrainConfig(max_seq_length=MAX_LEN).augment_config(), sim)
    return aug, g, sim


def batch(lengths, seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(np.arange(1, N_ITEMS + 1), size=n, replace=n > N_ITEMS) for n in lengths]
    width = max(max(lengths), 1)
    return seqs, left_pad(seqs, width), torch.tensor(lengths)


LENGTHS = [0, 1, 2, 3, 5, 16, 17, 30, 49, 50, 51, 80]


def run(aug, g, op, lengths=LENGTHS):
    seqs, x, n = batch(lengths)
    out = aug.augment(x, n, g, ops=torch.full((len(lengths),), op))
    assert out.shape == (len(lengths), MAX_LEN) and out.dtype == torch.int64
    return seqs, out


def body(row):
    """The items of a left-padded row without its left padding (for ops that make no inner 0)."""
    nz = torch.nonzero(row).flatten()
    return row[nz[0]:].tolist() if len(nz) else []


def assert_no_inner_padding(out):
    for row in out:
        items = body(row)
        assert 0 not in items and len(items) == int((row > 0).sum())


def test_crop_is_a_window(augmenter):
    aug, g, _ = augmenter
    seqs, out = run(aug, g, CROP)
    assert_no_inner_padding(out)
    for s, row in zip(seqs, out):
        got = body(row)
        keep = 0 if len(s) == 0 else max(1, int(0.2 * len(s)))
        assert len(got) == min(keep, MAX_LEN)
        windows = [s[i:i + keep].tolist() for i in range(len(s) - keep + 1)]
        assert len(s) == 0 or got in windows


def test_mask_replaces_gamma_items_by_zero(augmenter):
    aug, g, _ = augmenter
    seqs, out = run(aug, g, MASK)
    for s, row in zip(seqs, out):
        tail = row[MAX_LEN - min(len(s), MAX_LEN):].tolist() if len(s) else []
        original = s[-MAX_LEN:].tolist() if len(s) else []
        assert all(a == b or a == 0 for a, b in zip(tail, original))
        assert (row[:MAX_LEN - len(tail)] == 0).all()
        if len(s) <= MAX_LEN:
            assert tail.count(0) == int(0.7 * len(s))


def test_reorder_shuffles_one_window(augmenter):
    aug, g, _ = augmenter
    seqs, out = run(aug, g, REORDER)
    assert_no_inner_padding(out)
    for s, row in zip(seqs, out):
        got = body(row)
        original = s[-MAX_LEN:].tolist()
        if len(s) <= MAX_LEN:
            assert sorted(got) == sorted(original)
        diff = [i for i, (a, b) in enumerate(zip(got, original)) if a != b]
        if diff:
            assert diff[-1] - diff[0] < int(aug.beta * len(s))


def test_substitute_uses_most_similar(augmenter):
    aug, g, sim = augmenter
    seqs, out = run(aug, g, SUBSTITUTE)
    assert_no_inner_padding(out)
    for s, row in zip(seqs, out):
        got, original = body(row), s[-MAX_LEN:].tolist()
        assert len(got) == len(original)
        changed = [(a, b) for a, b in zip(got, original) if a != b]
        assert all(a == sim[b, 0] for a, b in changed)
        if 0 < len(s) <= MAX_LEN:
            assert len(changed) == max(1, int(0.5 * len(s)))


def test_insert_puts_similar_items_before_chosen_items(augmenter):
    aug, g, sim = augmenter
    lengths = [0, 1, 2, 5, 10, 16, 40]  # short enough that the whole result fits in MAX_LEN
    seqs, out = run(aug, g, INSERT, lengths)
    assert_no_inner_padding(out)
    kmax = 1  # max_insert_num_per_pos = 1: exactly one item before each chosen item (the original's rule)
    for s, row in zip(seqs, out):
        got, original = body(row), s.tolist()
        if len(s) * (kmax + 1) > MAX_LEN:
            continue
        # parse: before each original item x come its c most similar items (c = 0..kmax); sim[x, j] != x
        pos, n_chosen = 0, 0
        for item in original:
            c = got[pos:pos + kmax + 1].index(item)
            assert got[pos:pos + c] == sim[item, :c].tolist()
            n_chosen += c > 0
            pos += c + 1
        assert pos == len(got)
        if len(s):
            assert n_chosen == max(1, int(0.3 * len(s)))


def test_insert_on_long_sequences_keeps_the_last_items(augmenter):
    aug, g, _ = augmenter
    seqs, out = run(aug, g, INSERT, [80, 120])
    assert_no_inner_padding(out)
    for s, row in zip(seqs, out):
        assert (row > 0).all() and row[-1] in (s[-1], *range(1, N_ITEMS + 1))
        assert s[-1] in row[-4:].tolist()  # the last original item is at most kmax slots from the end


def test_op_sets_follow_the_threshold(augmenter):
    aug, g, _ = augmenter
    lengths = torch.tensor([1, 16, 17, 40] * 500)
    ops = aug.choose_ops(lengths, g)
    short, long_ = ops[lengths <= 16], ops[lengths > 16]
    assert set(short.tolist()) == set(SHORT_OPS)
    assert set(long_.tolist()) == set(LONG_OPS)
    counts = torch.bincount(long_, minlength=5).double() / len(long_)
    assert (counts - 0.2).abs().max() < 0.05


def test_views_are_reproducible_and_never_introduce_padding_ids(augmenter):
    aug, _, _ = augmenter
    seqs, x, n = batch([3, 10, 16, 20, 45, 60] * 20, seed=1)
    a = aug.views(x, n, torch.Generator().manual_seed(5))
    b = aug.views(x, n, torch.Generator().manual_seed(5))
    c = aug.views(x, n, torch.Generator().manual_seed(6))
    assert a.shape == (2 * len(seqs), MAX_LEN)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:len(seqs)], a[len(seqs):])  # two different views
    assert a.min() >= 0 and a.max() <= N_ITEMS
    # every view keeps something of each non-empty sequence
    assert ((a > 0).sum(1) > 0).all()


def test_itemcf_iuf_hand_computed():
    seqs = [np.array([1, 2, 3]), np.array([1, 2, 2]), np.array([2, 4])]
    # n_u (distinct) = 3, 2, 2; N = {1: 2, 2: 3, 3: 1, 4: 1}
    w3, w2 = 1 / math.log(4), 1 / math.log(3)
    sim = {(1, 2): (w3 + w2) / math.sqrt(6), (1, 3): w3 / math.sqrt(2), (2, 3): w3 / math.sqrt(3),
           (2, 4): w2 / math.sqrt(3)}
    assert sim[(1, 2)] > sim[(1, 3)] and sim[(2, 4)] > sim[(2, 3)]
    top = itemcf_iuf_topk(seqs, 5, 2, torch.Generator().manual_seed(0))
    assert top.shape == (6, 2)
    assert top[1].tolist() == [2, 3]
    assert top[2].tolist() == [1, 4]
    assert top[3].tolist() == [1, 2]
    assert top[4, 0] == 2 and top[4, 1] not in (0, 4)  # one co-occurring item, then a random fill
    assert top[5].min() >= 1 and 5 not in top[5].tolist()  # no co-occurrence: random other items


@pytest.mark.parametrize("model", ["mstein", "coserec"])
def test_nearest_items_matches_brute_force(model):
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, hidden_size=8, max_seq_length=5, backend="torch", initializer_range=0.5)
    m = build_model(model, 30, cfg.model_config())
    top = m.nearest_items(3, batch_size=7)
    assert top.shape == (31, 3)
    for item in range(1, 31):
        if m.distributional:
            mean, cov = m.item_gaussians()
            d = reference.pairwise_w2(mean[item - 1:item], cov[item - 1:item], mean, cov)[0]
        else:
            d = -(m.item_emb.weight[1:] @ m.item_emb.weight[item])
        d[item - 1] = float("inf")
        assert top[item].tolist() == (torch.argsort(d)[:3] + 1).tolist()
