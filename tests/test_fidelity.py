"""The original code's behaviours (docs/fidelity.md: "Differences from the original code"): those the
default now follows, and those only ``compat = "original"`` reproduces (docs/fidelity.md: "Differences from
the original code"). Tiny inputs, no original code needed."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast import reference
from mstein_fast.augment import CROP, INSERT, REORDER, SUBSTITUTE, Augmenter
from mstein_fast.config import COMPAT_DEFAULTS, ConfigError, TrainConfig, build_config, config_from_dict
from mstein_fast.models import FeedForward, attention_mask, build_model, elu_plus_one, original_attention_mask

L = 8


def model(name="mstein", **over):
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, hidden_size=8, max_seq_length=L, num_hidden_layers=1, backend="torch",
                      hidden_dropout_prob=0.0, temperature=0.5, **over)
    return build_model(name, 20, cfg.model_config()).double().eval()


SEQS = torch.tensor([[0, 0, 0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8]])


# -- what the default follows -----------------------------------------------------------------

def test_distributional_feed_forward_uses_elu_sasrec_gelu():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    for activation, fn in (("elu", F.elu), ("gelu", F.gelu)):
        block = FeedForward(8, 0.0, activation).double()
        want = block.norm(block.dense_2(fn(block.dense_1(x))) + x)
        assert torch.allclose(block(x), want, rtol=0, atol=1e-12)
    # float32 on the CPU: ELU fused into the first product (mstein_fast.nn.linear), same values
    block = FeedForward(8, 0.0, "elu")
    x32 = x.float()
    want = block.norm(block.dense_2(F.elu(block.dense_1(x32))) + x32)
    torch.testing.assert_close(block(x32), want, rtol=1e-5, atol=1e-5)
    assert model("mstein").mean_ffn[0].activation == "elu"
    assert model("stosa").cov_ffn[0].activation == "elu"
    assert model("sasrec").ffn[0].activation == "gelu"
    with pytest.raises(ValueError, match="gelu or elu"):
        FeedForward(8, 0.0, "relu")


def test_layer_norms_are_tied_between_the_streams():
    m = model("mstein")
    names = {n for n, mod in m.named_modules() if isinstance(mod, nn.LayerNorm)}
    # one for the two embeddings, one for the two attention outputs, one per feed-forward block
    assert names == {"embed_norm", "attention.0.norm", "mean_ffn.0.norm", "cov_ffn.0.norm"}
    # the shared attention norm acts on both streams: scaling its weight changes both outputs
    mean0, cov0 = m.encode(SEQS)
    with torch.no_grad():
        m.attention[0].norm.weight.mul_(1.5)
    mean1, cov1 = m.encode(SEQS)
    assert not torch.allclose(mean0[:, -1], mean1[:, -1]) and not torch.allclose(cov0[:, -1], cov1[:, -1])


def test_initialisation_means_follow_the_original_per_backbone():
    torch.manual_seed(0)
    big = {"hidden_size": 64, "max_seq_length": L, "backend": "torch"}
    stosa = build_model("mstein", 2000, TrainConfig(model="mstein", **big).model_config())
    sasrec = build_model("coserec", 2000, TrainConfig(model="coserec", **big).model_config())
    chosen = build_model("coserec", 2000, TrainConfig(model="coserec", init_mean=0.01, **big).model_config())
    # 2000 x 64 normal(mu, 0.02) draws: the mean is mu +- 3 * 0.02 / sqrt(128000) = +- 1.7e-4
    assert abs(stosa.item_mean.weight[1:].mean().item() - 0.01) < 2e-4
    assert abs(sasrec.item_emb.weight[1:].mean().item()) < 2e-4
    assert abs(chosen.item_emb.weight[1:].mean().item() - 0.01) < 2e-4


def test_compat_initialisation_is_the_originals_distribution_per_parameter():
    # docs/fidelity.md "initial weights of a seed": other numbers than the original's for a seed, the same
    # distribution: every linear and embedding weight normal(0.01, 0.02) (padding rows included:
    # random, as the original's), zero biases, unit LayerNorms
    torch.manual_seed(3)
    m = build_model("mstein", 500, TrainConfig(model="mstein", compat="original", hidden_size=64, max_seq_length=L,
                                               backend="torch").model_config())
    seen = 0
    for name, p in m.named_parameters():
        x = p.detach().double().flatten()
        if name.endswith("bias"):
            assert torch.equal(x, torch.zeros_like(x)), name
        elif "norm" in name:
            assert torch.equal(x, torch.ones_like(x)), name
        else:  # n draws: mean within 5 standard errors, std within 5 of its own (about 1/sqrt(2n) relative)
            n = x.numel()
            assert abs(x.mean().item() - 0.01) < 5 * 0.02 / n**0.5, name
            assert abs(x.std().item() / 0.02 - 1) < 5 / (2 * n) ** 0.5, name
            seen += 1
    assert seen >= 8  # item and position tables, q/k/v, output and feed-forward layers
    assert m.item_mean.weight[0].abs().sum() > 0 and m.item_cov.weight[0].abs().sum() > 0


def insert_counts(aug, lengths, draws=400):
    """Per length, the set of item counts inserted before chosen positions (identity similarity
    table whose neighbours are item 99, so inserted items are recognisable)."""
    n_items = 100
    sim = torch.full((n_items + 1, aug.similar_k), 99, dtype=torch.int64)
    aug.set_similarity(sim)
    g = torch.Generator().manual_seed(0)
    seen = {}
    for n in lengths:
        x = torch.arange(1, n + 1).repeat(draws, 1)  # items 1..n, never 99
        out = aug.augment(x, torch.full((draws,), n), g, ops=torch.full((draws,), INSERT))
        counts = set()
        for row in out.tolist():
            run = 0
            for item in [i for i in row if i]:
                if item == 99:
                    run += 1
                else:
                    if run:
                        counts.add(run)
                    run = 0
        seen[n] = counts
    return seen


def test_insert_count_follows_the_original_rule():
    # c uniform in 1..max(1, int(M / m)), m = max(1, int(0.3 * n)) positions chosen
    one = Augmenter(TrainConfig(max_seq_length=40).augment_config())  # M = 1: exactly one item per chosen position
    assert insert_counts(one, [2, 5, 12]) == {2: {1}, 5: {1}, 12: {1}}
    four = Augmenter(TrainConfig(max_seq_length=40, max_insert_num_per_pos=4).augment_config())
    # n = 3: m = 1 -> 1..4; n = 7: m = 2 -> 1..2; n = 10: m = 3 -> 1
    assert insert_counts(four, [3, 7, 10]) == {3: {1, 2, 3, 4}, 7: {1, 2}, 10: {1}}


def test_reorder_ratio_defaults_to_the_originals_0_7():
    assert TrainConfig().beta == 0.7 == TrainConfig().gamma


@pytest.mark.parametrize("name", ["mstein", "stosa"])
def test_default_mean_stream_is_the_originals(name):
    # the distributional models' settings drop each layer's new means, as the original's encoder does
    cfg, _ = build_config(None, {"model": name, "data": "x.txt"})
    assert cfg.mean_stream_typo
    off, _ = build_config(None, {"model": name, "data": "x.txt", "mean_stream_typo": False})
    assert not off.mean_stream_typo  # an option still wins
    for single in ("sasrec", "coserec", "coserec-wdm"):  # one stream: nothing to drop
        assert not build_config(None, {"model": single, "data": "x.txt"})[0].mean_stream_typo
    # a run saved before the key existed trained with the means propagated: it still loads that way
    saved = {k: v for k, v in cfg.to_dict().items() if k != "mean_stream_typo"}
    assert not config_from_dict(saved, "old run").mean_stream_typo
    assert config_from_dict(cfg.to_dict(), "new run").mean_stream_typo
    torch.manual_seed(0)
    small = dataclasses.replace(cfg, hidden_size=8, max_seq_length=L, num_attention_heads=2, backend="torch",
                                batch_size=4)
    m = build_model(name, 20, small.model_config()).double().eval()
    mean, _ = m.encode(SEQS)
    embedded = F.elu(m.embed_norm(m.item_mean(SEQS) + m.position_mean(torch.arange(L))))
    torch.testing.assert_close(mean, embedded, rtol=1e-12, atol=1e-12)


# -- what only compat = "original" reproduces -----------------------------------------------------

def windows(aug, op, n, draws=3000):
    """For crop: the set of window starts; for reorder: the set of the last positions moved, for a
    sequence 1..n."""
    aug.set_similarity(torch.zeros(101, 1, dtype=torch.int64))
    g = torch.Generator().manual_seed(1)
    x = torch.arange(1, n + 1).repeat(draws, 1)
    out = aug.augment(x, torch.full((draws,), n), g, ops=torch.full((draws,), op))
    seen = set()
    for row in out.tolist():
        body = [i for i in row if i]
        if op == CROP:
            seen.add(body[0] - 1)
        else:
            moved = [i for i, v in enumerate(body) if v != i + 1]
            if moved:
                seen.add(moved[-1])
    return seen


def test_compat_crop_and_reorder_never_pick_the_last_window():
    n = 10
    default = Augmenter(TrainConfig(max_seq_length=20).augment_config())
    compat = Augmenter(TrainConfig(max_seq_length=20, compat="original").augment_config())
    # crop keeps int(0.2 * 10) = 2 items: windows start at 0..8, the original's at 0..7
    assert windows(default, CROP, n) == set(range(9))
    assert windows(compat, CROP, n) == set(range(8))
    # reorder shuffles int(0.7 * 10) = 7 items: the last window (positions 3..9) moves position 9;
    # the original's windows start at 0..2 and never reach it
    assert max(windows(default, REORDER, n)) == 9
    assert max(windows(compat, REORDER, n)) == 8
    assert compat.beta == compat.gamma


def test_compat_reorder_uses_the_mask_ratio():
    assert Augmenter(TrainConfig(beta=0.2, gamma=0.5, compat="original").augment_config()).beta == 0.5
    assert Augmenter(TrainConfig(beta=0.2, gamma=0.5).augment_config()).beta == 0.2


def test_degenerate_similarity_masks_and_inserts_items_0_and_1():
    aug = Augmenter(TrainConfig(max_seq_length=20, compat="original").augment_config())
    aug.set_degenerate(30)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[5, 6, 7, 8, 9, 2, 3, 4, 10, 11]] * 50)  # no item 0 or 1
    n = torch.full((50,), 10)
    sub = aug.augment(x, n, g, ops=torch.full((50,), SUBSTITUTE))[:, -10:]
    changed = sub != x
    assert (sub[changed] == 0).all() and (changed.sum(1) == 5).all()  # int(0.5 * 10) items -> padding id
    for row in aug.augment(x, n, g, ops=torch.full((50,), INSERT)).tolist():
        # int(0.3 * 10) = 3 chosen items, each preceded by the pair 0, 1
        assert [i for i in row if i > 1] == x[0].tolist()
        ones = [k for k, v in enumerate(row) if v == 1]
        assert len(ones) == 3 and all(row[k - 1] == 0 and row[k + 1] > 1 for k in ones)
    # item 1 is excluded from its own list: a lone 0 (and substitute gives 0 as for every item)
    assert aug.similar[1].tolist()[:1] == [0] and aug.similar[7].tolist()[:2] == [0, 1]
    aug.set_similarity(torch.ones(31, 1, dtype=torch.int64))
    assert not aug.degenerate  # a real table ends the degenerate mode


def test_compat_padding_rows_are_random_frozen_and_attend_to_the_whole_row():
    default, compat = model(), model(compat="original")
    assert (default.item_mean.weight[0] == 0).all() and (default.item_cov.weight[0] == 0).all()
    assert (compat.item_mean.weight[0] != 0).all() and (compat.item_cov.weight[0] != 0).all()
    # a padding query has no allowed key: the original's additive mask makes it attend uniformly
    # to all L positions of its row, so its cov output depends on the row's (later) items
    changed = SEQS.clone()
    changed[0, 4:] = torch.tensor([9, 10, 11, 12])
    _, cov_a = compat.encode(SEQS)
    _, cov_b = compat.encode(changed)
    assert not torch.allclose(cov_a[0, :4], cov_b[0, :4])
    _, cov_a = default.encode(SEQS)
    _, cov_b = default.encode(changed)
    assert torch.allclose(cov_a[0, :4], cov_b[0, :4])  # default: padding attends to itself only
    mask = original_attention_mask(SEQS, -(2.0**32) + 1)
    assert mask[0, 0, 0].eq(-(2.0**32) + 1).all() and mask[2, 0].tril().eq(0).all()
    # padding rows get no gradient in either mode
    compat.train()
    compat.contrastive_loss(torch.cat([SEQS, SEQS.flip(0)])).backward()
    assert compat.item_mean.weight.grad[0].eq(0).all() and compat.item_cov.weight.grad[0].eq(0).all()


@pytest.mark.parametrize("layers", [1, 2])
def test_mean_stream_typo_alone_changes_only_the_mean_stream(layers):
    # the switch alone: the encoder returns the embedded input means (compat's, the original's typo),
    # while everything else (padding, losses, the cov stream of a one-layer model) stays the default's
    def make(**over):
        torch.manual_seed(0)
        cfg = TrainConfig(model="mstein", hidden_size=8, max_seq_length=L, num_hidden_layers=layers,
                          backend="torch", hidden_dropout_prob=0.0, temperature=0.5, **over)
        return build_model("mstein", 20, cfg.model_config()).double().eval()

    alone, default = make(mean_stream_typo=True), make()
    default.load_state_dict(alone.state_dict())
    mean_a, cov_a = alone.encode(SEQS)
    mean_d, cov_d = default.encode(SEQS)
    pos = torch.arange(L)
    embedded = alone.embed_norm(alone.item_mean(SEQS) + alone.position_mean(pos))
    embedded = torch.where(embedded > 0, embedded, torch.expm1(embedded))  # ELU, dropout off
    torch.testing.assert_close(mean_a, embedded, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(mean_a, mean_d)
    if layers == 1:  # the cov stream sees the input means only through the first layer: unchanged
        torch.testing.assert_close(cov_a, cov_d, rtol=1e-12, atol=1e-12)
    else:  # the second layer sees the un-propagated means
        assert not torch.allclose(cov_a, cov_d)
    # the fast paths (bucketed windows, self-only padding, last position only) keep the typo
    for fast, full in zip(alone.encode_fast(SEQS), alone.encode(SEQS)):
        torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-12)
    for last, full in zip(alone.last_gaussians(SEQS), alone.encode(SEQS)):
        torch.testing.assert_close(last, full[:, -1], rtol=1e-12, atol=1e-12)
    assert model(compat="original").mean_stream_typo and not model().mean_stream_typo
    with pytest.raises(ConfigError, match="mean_stream_typo"):
        TrainConfig(model="sasrec", mean_stream_typo=True).validate()


@pytest.mark.parametrize("layers", [1, 2])
def test_mean_stream_typo_skips_only_work_whose_output_is_dropped(layers):
    # under the typo the encoder does not compute the mean values, mean output layers and mean
    # feed-forward blocks; reference: every layer computed in full (its mean output dropped), as the
    # original code does. Same outputs and parameter gradients on every encoder path.
    def make(typo=True):
        torch.manual_seed(0)
        cfg = TrainConfig(model="mstein", hidden_size=8, num_attention_heads=2, max_seq_length=L,
                          num_hidden_layers=layers, backend="torch", hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.5, temperature=0.5, mean_stream_typo=typo)
        return build_model("mstein", 20, cfg.model_config()).double()

    def full(m, seqs, self_only=False):  # the reference: the layers in full, mean outputs dropped
        pos = torch.arange(seqs.shape[1])
        mean, cov = m._embed(seqs, pos)
        allowed = attention_mask(seqs)
        for attention, cov_ffn in zip(m.attention, m.cov_ffn):
            new_mean, cov = attention.forward_self_only(mean, cov) if self_only else attention(mean, cov, allowed)
            assert new_mean is not None
            cov = cov_ffn(cov, "elu_plus_one")
        return mean, cov

    def grads(m, outputs):
        for p in m.parameters():
            p.grad = None
        torch.manual_seed(7)
        sum((t * torch.randn_like(t)).sum() for t in outputs).backward()
        return {n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}

    def same(got, want):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    m = make()
    # the dropped layers are frozen (DistributedDataParallel would wait for their gradients), the rest not
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in m.named_parameters() if "mean_dense" in n or n.startswith("mean_ffn")}
    assert frozen and all(p.requires_grad for p in make(typo=False).parameters())
    lead = torch.zeros(3, L, dtype=torch.long)
    for training, seqs in ((False, SEQS), (True, SEQS), (True, lead)):
        m.train(training)  # training: attention dropout on (same masks: one draw per layer either way)
        self_only = bool(training and not seqs.any())
        torch.manual_seed(1)
        want = full(m, seqs, self_only)
        want_grads = grads(m, want)
        torch.manual_seed(1)
        got = m._encode_lead(3, L) if self_only else m.encode(seqs)
        got_grads = grads(m, got)
        same(got, want)
        assert got_grads.keys() == want_grads.keys()
        for name in got_grads:
            if want_grads[name] is None:  # only the dropped mean layers get no gradient
                assert got_grads[name] is None, name
                # (the padding path's queries and keys are not needed either: no mean projection)
                assert "mean_dense" in name or name.startswith("mean_ffn") or (self_only and "mean_qkv" in name), name
            elif got_grads[name] is None:  # the padding path reads item 0's rows detached (padding_idx)
                assert name.startswith("item_") and not want_grads[name].any(), name
            else:
                torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-10, atol=1e-12)
    m.eval()  # the bucketed and last-position paths too
    want = full(m, SEQS)
    same(m.encode_fast(SEQS), want)
    same(m.last_gaussians(SEQS), (t[:, -1] for t in want))


def test_compat_contrastive_loss_activates_the_cov_twice():
    compat = model(compat="original")
    views = torch.cat([SEQS, SEQS.flip(0)])
    mean, cov = compat.encode(views)
    b = len(SEQS)
    flat_m, flat_c = mean.reshape(2 * b, -1), elu_plus_one(cov).reshape(2 * b, -1)
    want = reference.wasserstein_infonce(flat_m[:b], flat_c[:b], flat_m[b:], flat_c[b:], temperature=0.5)
    assert torch.allclose(compat.contrastive_loss(views), want, rtol=1e-10, atol=0)
    default = model()
    default.load_state_dict(compat.state_dict())
    mean, cov = default.encode_fast(views)
    flat_m, flat_c = mean.reshape(2 * b, -1), cov.reshape(2 * b, -1)
    want = reference.wasserstein_infonce(flat_m[:b], flat_c[:b], flat_m[b:], flat_c[b:], temperature=0.5)
    assert torch.allclose(default.contrastive_loss(views), want, rtol=1e-10, atol=0)


def test_compat_bpr_is_the_originals_unstable_form():
    compat, default = model(compat="original"), model()
    default.load_state_dict(compat.state_dict())
    targets, negatives = SEQS.roll(-1, 1) * (SEQS > 0), (SEQS + 3) % 20 * (SEQS > 0)
    mean, cov = compat.encode(SEQS)
    # moderate distances: the same terms up to the 1e-24 inside the log
    for a, b in zip(compat._rec_terms(mean, cov, targets, negatives), default._rec_terms(mean, cov, targets, negatives)):
        assert torch.allclose(a, b, rtol=1e-12)
    # the sequence output sits on the negative, far from the target: sigmoid(-W) underflows
    with torch.no_grad():
        for m in (compat, default):
            m.item_mean.weight[1:].mul_(1e4)
    targets, negatives = targets[2:], negatives[2:]  # a full row: padding (weight 0) would make inf * 0 = nan
    mean, cov = compat.item_gaussians(negatives)
    a = compat._rec_terms(mean, cov, targets, negatives)[0]
    b = default._rec_terms(mean, cov, targets, negatives)[0]
    assert math.isinf(a.item()) and math.isfinite(b.item()) and b.item() > 1e3


def test_compat_sasrec_bce_is_the_originals_capped_form():
    compat, default = model("sasrec", compat="original"), model("sasrec")
    default.load_state_dict(compat.state_dict())
    targets, negatives = SEQS.roll(-1, 1) * (SEQS > 0), (SEQS + 3) % 20 * (SEQS > 0)
    a, _ = compat.rec_loss(SEQS, targets, negatives)
    b, _ = default.rec_loss(SEQS, targets, negatives)
    assert torch.allclose(a, b, rtol=1e-9)  # moderate logits: the same up to the 1e-24s
    with torch.no_grad():
        for m in (compat, default):
            m.item_emb.weight[1:].mul_(-1e4)  # pushes the logits far out
    a, _ = compat.rec_loss(SEQS, targets, negatives)
    b, _ = default.rec_loss(SEQS, targets, negatives)
    # -log(sigmoid(x) + 1e-24) <= -log(1e-24) per term in the original; the default is unbounded
    assert a.item() <= 2 * -math.log(1e-24) + 1e-9 < b.item()


@pytest.mark.parametrize("name", ["mstein", "sasrec"])
def test_compat_ranks_the_padding_item_as_a_candidate(name):
    from mstein_fast.data import leave_one_out, synthetic_sequences
    from mstein_fast.evaluate import evaluate_ranks, target_ranks

    split = leave_one_out(synthetic_sequences(n_users=50, n_items=30, n_clusters=3), 10)
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, hidden_size=8, max_seq_length=10, backend="torch", compat="original")
    compat = build_model(name, split.n_items, cfg.model_config()).eval()
    plain = compat.score_items(split.eval_arrays("valid")[0])
    full = compat.score_items(split.eval_arrays("valid")[0], include_padding=True)
    assert full.shape[1] == split.n_items + 1 and torch.equal(full[:, 1:], plain)
    inputs, targets, seen = split.eval_arrays("valid")
    from mstein_fast.evaluate import seen_mask

    excluded = seen_mask(seen, torch.arange(len(targets)), split.n_items, "cpu")
    without = target_ranks(plain, targets, excluded)
    with_pad = evaluate_ranks(compat, split, "valid")
    t = plain.gather(1, (targets - 1).unsqueeze(1))[:, 0]
    assert torch.equal(with_pad, without + (full[:, 0] >= t).long())
    # make item 0 everyone's best candidate: no target can be ranked first any more
    with torch.no_grad():
        if name == "mstein":
            mean, _ = compat.last_gaussians(inputs)
            compat.item_mean.weight[0] = mean.mean(0)
            compat.item_cov.weight[0] = 5.0  # ELU + 1 = 6: far from everything but equally so
            compat.item_mean.weight[1:] += 100.0
        else:
            compat.item_emb.weight[0] = 1e3 * compat.encode(inputs)[:, -1].mean(0)
    assert evaluate_ranks(compat, split, "valid").min() >= 1


def test_compat_config_early_stops_on_mrr_at_40_unless_told_otherwise():
    cfg, _ = build_config(None, {"compat": "original"})
    assert cfg.early_stop_metric == COMPAT_DEFAULTS["early_stop_metric"] == "mrr@40"
    cfg, _ = build_config(None, {"compat": "original", "early_stop_metric": "ndcg@10"})
    assert cfg.early_stop_metric == "ndcg@10"
    assert build_config(None, {})[0].early_stop_metric == "mrr"
    assert (cfg.patience, cfg.epochs) == (5, 15)  # the quick preset for the synthetic data
    cfg, _ = build_config(None, {"compat": "original", "data": "x.txt"})
    assert (cfg.patience, cfg.epochs, cfg.seed) == (100, 500, 42)


def test_stosa_takes_its_own_published_command():
    cfg, _ = build_config(None, {"model": "stosa", "data": "x.txt"})
    assert (cfg.batch_size, cfg.max_seq_length, cfg.hidden_dropout_prob, cfg.num_attention_heads,
            cfg.pvn_weight) == (256, 100, 0.3, 4, 0.005)
    cfg, _ = build_config({"batch_size": 512}, {"model": "stosa", "data": "x.txt"})
    assert cfg.batch_size == 512  # a file or an option still wins
    mstein, _ = build_config(None, {"model": "mstein", "data": "x.txt"})
    assert (mstein.batch_size, mstein.max_seq_length) == (1024, 50)


def test_compat_changes_no_parameter_and_no_other_config_key():
    default, compat = build_config(None, {"data": "x.txt"})[0], build_config(None, {"data": "x.txt",
                                                                                  "compat": "original"})[0]
    changed = {k for k, v in default.to_dict().items() if compat.to_dict()[k] != v}
    assert changed == {"compat", *COMPAT_DEFAULTS}
    for name in ("mstein", "sasrec"):
        a, b = model(name), model(name, compat="original")
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}



@pytest.mark.parametrize("compat", ["none", "original"])
def test_compat_switches_to_the_degenerate_similarity_one_epoch_later(tmp_path, compat):
    from mstein_fast.train import Trainer

    cfg, _ = build_config(None, {"synthetic_users": 60, "synthetic_items": 40, "synthetic_clusters": 4,
                                 "max_seq_length": 10, "hidden_size": 8, "batch_size": 64, "progress": False,
                                 "augmentation_warm_up_epochs": 1, "compat": compat, "device": "cpu"})
    trainer = Trainer(cfg, str(tmp_path))
    offline = trainer.offline_similar
    for epoch in (1, 2, 3):
        trainer.train_epoch(epoch)
        degenerate, on_offline = trainer.augmenter.degenerate, trainer.augmenter.similar is offline
        if compat == "original":  # the original's 0-based epoch > W: 1-based epoch > W + 1
            assert (degenerate, on_offline) == ((False, True) if epoch <= 2 else (True, False))
        else:
            assert not degenerate and on_offline == (epoch <= 1)

# docs/fidelity.md "Differences from the original code": every row and the test that pins it down
README_ROWS = {
    "online item similarity after the warm-up": test_degenerate_similarity_masks_and_inserts_items_0_and_1,
    "warm-up switch": test_compat_switches_to_the_degenerate_similarity_one_epoch_later,
    "BPR term": test_compat_bpr_is_the_originals_unstable_form,
    "SASRec/CoSeRec BCE": test_compat_sasrec_bce_is_the_originals_capped_form,
    "covariances in the InfoNCE": test_compat_contrastive_loss_activates_the_cov_twice,
    "padding rows of the item embeddings": test_compat_padding_rows_are_random_frozen_and_attend_to_the_whole_row,
    "padding queries in the attention": test_compat_padding_rows_are_random_frozen_and_attend_to_the_whole_row,
    "crop and reorder windows": test_compat_crop_and_reorder_never_pick_the_last_window,
    "reorder ratio": test_compat_reorder_uses_the_mask_ratio,
    "early stopping": test_compat_config_early_stops_on_mrr_at_40_unless_told_otherwise,
    "item 0 (padding) in the ranking": test_compat_ranks_the_padding_item_as_a_candidate,
    "random streams": None,  # not reproducible bit for bit
    "initial weights of a seed": test_compat_initialisation_is_the_originals_distribution_per_parameter,
}


def test_docs_table_lists_exactly_the_tested_differences():
    import pathlib

    text = (pathlib.Path(__file__).parent.parent / "docs" / "fidelity.md").read_text()
    section = text.split("## Differences from the original code", 1)[1].split("\n\n| behaviour", 1)[1]
    rows = [line.split("|")[1].strip() for line in section.split("\n\n", 1)[0].splitlines()[2:]]
    assert set(rows) == set(README_ROWS) and len(rows) == len(README_ROWS)


def test_compat_refuses_the_padding_pool():
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(compat="original", padding_pool=64).validate()


@pytest.mark.parametrize("key, fate", [("original_padding", 'folded into compat = "original"'),
                                       ("cl_double_cov_activation", 'folded into compat = "original"'),
                                       ("shared_padding", "removed")])
def test_settings_without_a_key_of_their_own_are_refused_with_their_fate(tmp_path, key, fate):
    # compat = "original" holds the original's padding and double activation; a config file switching
    # one of them on alone (or shared_padding, gone) is refused, naming the key and what became of it
    from mstein_fast.config import load_config_file

    path = tmp_path / "run.json"
    path.write_text(f'{{"{key}": true}}')
    with pytest.raises(ConfigError, match=rf"^{path}: config key '{key}' = True is not supported any more "
                                          rf"\({fate}"):
        load_config_file(str(path))
