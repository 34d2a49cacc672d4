"""End-to-end training on a tiny synthetic data set, checkpoints, resume, and model properties."""

import json

import pytest
import torch
import torch.nn.functional as F

import mstein_fast
import mstein_fast.train as train_module
from mstein_fast import reference
from mstein_fast.config import TrainConfig, build_config
from mstein_fast.data import leave_one_out, synthetic_sequences
from mstein_fast.evaluate import evaluate
from mstein_fast.models import MODELS, attention_mask, build_model, elu_plus_one, length_buckets
from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
from mstein_fast.errors import Interrupted
from mstein_fast.train import Trainer, train

TINY = {"synthetic_users": 200, "synthetic_items": 60, "synthetic_clusters": 4, "max_seq_length": 20,
        "hidden_size": 16, "batch_size": 64, "lr": 0.005, "augmentation_warm_up_epochs": 2, "patience": 100,
        "progress": False, "device": "cpu"}


def tiny_config(**over):
    cfg, quick = build_config(None, {**TINY, **over})
    assert quick  # no data file: the quick preset was applied under our values
    return cfg


def read_metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_trains_and_beats_popularity(tmp_path, model):
    # CoSeRec(WDM)'s InfoNCE at T = 1e-6 on the raw SASRec outputs swings this 200-user run by
    # +-0.04 MRR from seed to seed (measured: 0.17-0.24 against popularity 0.18 at cf_weight 0.005):
    # a lighter weight keeps the test about the training machinery, not about that seed noise
    # The baselines' reference weight (cf_weight 0.1, CL4SRec/DuoRec) holds this tiny hidden size 16 at
    # popularity's level for 6 epochs (measured 0.16-0.18 MRR against 0.18), 0.01 does not (0.41-0.45).
    # The user-embedding models see each user once an epoch: Caser needs 20 epochs here (0.26 against
    # 0.18); BPRMF, order-blind, is about level with popularity on this order-driven data, so its test
    # is that it trains, not that it beats popularity (tests/test_baselines_user.py tests what it learns).
    # BERT4Rec's Cloze loss has about 2 masked items per row (half of the rows mask their last item only)
    # where the next-item losses have every position: on this data it stays at popularity's level for
    # tens of epochs (measured: test MRR 0.12-0.16 after 30-40 epochs, 0.19 after 60 without dropout,
    # popularity 0.18), so its test here is that it trains too (tests/test_baselines_bert4rec.py tests it).
    extra = {"cf_weight": 0.001} if model == "coserec-wdm" else {}
    extra.update({"cf_weight": 0.01} if model in ("cl4srec", "duorec") else {})
    epochs = 20 if model == "caser" else 6
    result = train(tiny_config(model=model, epochs=epochs, **extra), str(tmp_path))
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert records[-1]["loss"] < records[0]["loss"]
    assert (records[0]["cl_loss"] is None) == (MODELS[model][1] is None)
    if model not in ("bprmf", "bert4rec"):
        assert result["test"]["mrr"] > 1.1 * result["popularity_test"]["mrr"]
        assert result["test"]["recall@10"] > result["popularity_test"]["recall@10"]
    assert json.loads((tmp_path / "test_metrics.json").read_text()) == result
    # the best checkpoint round-trips: same test metrics from a fresh model
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt["epoch"] == result["best_epoch"] and ckpt["config"].model == model
    restored = model_from_checkpoint(ckpt, torch.device("cpu"))
    split = leave_one_out(synthetic_sequences(n_users=200, n_items=60, n_clusters=4), 20)
    assert evaluate(restored, split, "test") == result["test"]


def test_interrupt_during_a_checkpoint_write_names_what_is_on_disk(tmp_path, monkeypatch):
    """Ctrl-C while last.pt of epoch 2 is being written: the message reads last.pt back (epoch 1),
    it does not assume that the epoch it was in got saved."""
    cfg = tiny_config(model="sasrec", epochs=3, backend="torch")
    real = mstein_fast.checkpoint.save_atomic  # what RunDirectory writes checkpoints with
    writes = {"last": 0}

    def interrupted_second_write(obj, path):
        if path.endswith("last.pt"):
            writes["last"] += 1
            if writes["last"] == 2:
                raise KeyboardInterrupt
        return real(obj, path)

    monkeypatch.setattr(mstein_fast.checkpoint, "save_atomic", interrupted_second_write)
    with pytest.raises(Interrupted) as info:
        train(cfg, str(tmp_path / "cut"))
    assert "last.pt holds epoch 1;" in str(info.value) and "epoch 2" not in str(info.value)
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["epoch"] == 1
    assert "holds epoch 1" in (tmp_path / "cut" / "train.log").read_text()


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    "cpp" not in __import__("mstein_fast").available_backends(), reason="C++ extension not built"))])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, ctrl_c_at_batch, backend):
    # bit-exact equality: the C++ kernels use static OpenMP schedules (bitwise reproducible for a
    # given thread count), so the C++ backend must resume exactly too
    cfg = tiny_config(model="mstein", epochs=4, backend=backend)
    full = train(cfg, str(tmp_path / "full"))

    ctrl_c_at_batch(10)  # Ctrl-C in the middle of epoch 3 (4 batches per epoch)
    with pytest.raises(Interrupted, match="last.pt holds epoch 2; continue with"):
        train(cfg, str(tmp_path / "cut"))
    ctrl_c_at_batch(None)
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["epoch"] == 2
    assert len(read_metrics(tmp_path / "cut")) == 2
    with pytest.raises(train_module.UserError, match="already holds a run"):
        Trainer(cfg, str(tmp_path / "cut"))
    resumed = Trainer(cfg, str(tmp_path / "cut"), resume=True).fit()
    assert resumed == full
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(tmp_path / "cut")]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(tmp_path / "full")]


def test_early_stopping_and_resume_of_a_finished_run(tmp_path):
    cfg = tiny_config(model="sasrec", epochs=30, patience=1, lr=0.05)
    result = train(cfg, str(tmp_path))
    assert result["epochs"] < 30 and result["epochs"] - result["best_epoch"] == 1
    assert Trainer(cfg, str(tmp_path), resume=True).fit() == result  # nothing left to train


def small_model(name, **over):
    torch.manual_seed(0)
    cfg = TrainConfig(model=name, hidden_size=8, max_seq_length=6, num_hidden_layers=2, backend="torch", **over)
    return build_model(name, 20, cfg.model_config()).eval()


def test_compat_original_does_not_propagate_the_mean():
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    compat = small_model("stosa", compat="original")
    fixed = small_model("stosa")
    fixed.load_state_dict(compat.state_dict())
    pos = torch.arange(6)
    embedded = F.elu(compat.embed_norm(compat.item_mean(seqs) + compat.position_mean(pos)))
    mean_c, cov_c = compat.encode(seqs)
    mean_f, cov_f = fixed.encode(seqs)
    assert torch.allclose(mean_c, embedded)  # the original defect: the layers' mean output is dropped
    assert not torch.allclose(mean_f, embedded)
    assert not torch.allclose(cov_c, cov_f)  # the cov stream sees a different mean input from layer 2 on
    assert (cov_f > 0).all() and (cov_c > 0).all()


@pytest.mark.parametrize("name", ["stosa", "sasrec"])
def test_attention_is_causal_and_finite(name):
    model = small_model(name)
    seqs = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 3, 0, 5, 6], [1, 2, 3, 4, 5, 6]])
    out = model.encode(seqs)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()
    changed = seqs.clone()
    changed[:, 4:] = 7  # the future of position 3
    out2 = model.encode(changed)
    out2 = out2[0] if isinstance(out2, tuple) else out2
    assert torch.allclose(out[2, :4], out2[2, :4])
    mask = attention_mask(seqs)
    assert mask[0, 0].equal(torch.eye(6, dtype=torch.bool))  # all padding: attend to self only
    assert mask[1, 0, 3].tolist() == [False, False, True, False, False, False]  # masked item -> earlier item


def test_losses_are_finite_for_far_away_gaussians():
    model = small_model("mstein", initializer_range=30.0)
    seqs = torch.tensor([[0, 1, 2, 3, 4, 5]])
    targets = torch.tensor([[0, 2, 3, 4, 5, 6]])
    negatives = torch.tensor([[0, 9, 9, 9, 9, 9]])
    loss, parts = model.rec_loss(seqs, targets, negatives)
    assert torch.isfinite(loss) and torch.isfinite(parts["bpr"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_only_batch_gives_zero_rec_loss():
    model = small_model("sasrec")
    zeros = torch.zeros(2, 6, dtype=torch.long)
    loss, _ = model.rec_loss(zeros, zeros, zeros)
    assert loss.item() == 0.0


def test_length_buckets_cover_every_row_once():
    lengths = torch.tensor([0, 3, 50, 7, 7, 1, 12, 50, 2, 0, 33])
    for cost in (0.0, 10.0, 1e9):
        buckets = length_buckets(lengths, cost)
        rows = torch.cat([r for r, _ in buckets])
        assert sorted(rows.tolist()) == list(range(len(lengths)))
        for r, w in buckets:
            assert w == int(lengths[r].max())
    assert len(length_buckets(lengths, 1e9)) == 1
    assert len(length_buckets(lengths, 0.0)) == len(lengths.unique())


@pytest.mark.parametrize("bucket_cost", [None, 0.0])
@pytest.mark.parametrize("compat,layers", [("none", 1), ("none", 2), ("original", 2)])
def test_skip_padding_equals_the_full_computation(compat, layers, bucket_cost):
    # windowed / bucketed encoder (skip_padding, the default) vs the straightforward [B, L] one, in
    # float64 so that only exact equivalence passes: outputs, losses and every parameter's gradient;
    # bucket_cost 0: a bucket per distinct length (many windows, their item rows looked up at once)
    torch.manual_seed(1)
    cfg = TrainConfig(model="mstein", hidden_size=8, max_seq_length=12, num_hidden_layers=layers, backend="torch",
                      compat=compat, temperature=0.5)
    model = build_model("mstein", 30, cfg.model_config()).double().eval()
    if bucket_cost is not None:
        model.bucket_cost = bucket_cost
    b, L = 24, 12
    lengths = torch.randint(0, L + 1, (b,))
    lengths[:3] = torch.tensor([0, L, 1])  # an empty row, a full row, a single item
    seqs = torch.randint(1, 31, (b, L)).masked_fill(torch.arange(L) < (L - lengths).unsqueeze(1), 0)
    seqs = seqs.masked_fill(torch.rand(b, L) < 0.2, 0)  # masked items inside (the mask augmentation)
    targets = torch.randint(1, 31, (b, L)) * (seqs > 0)
    negatives = torch.randint(1, 31, (b, L)) * (seqs > 0)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    for fast, full in zip(model.encode_fast(seqs), model.encode(seqs)):
        torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-12)
    rec_fast, rec_full = model.rec_loss(seqs, targets, negatives)[0], model._rec_loss_full(seqs, targets, negatives)[0]
    torch.testing.assert_close(rec_fast, rec_full, rtol=1e-12, atol=0)
    for g1, g2 in zip(grads(rec_fast), grads(rec_full)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-15)
    cl_fast, cl_full = model.contrastive_loss(seqs), model._wasserstein_infonce(*model.encode(seqs))
    torch.testing.assert_close(cl_fast, cl_full, rtol=1e-12, atol=0)
    for g1, g2 in zip(grads(cl_fast), grads(cl_full)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-15)
    assert model.item_mean.weight.grad[0].abs().max() == 0  # padding_idx gets no gradient
    # scoring: the last position only (the last layer computes nothing else), against the full encoder
    full = [t[:, -1] for t in model.encode(seqs)]
    for skip_padding in (True, False):
        model.skip_padding = skip_padding
        for last, expected in zip(model.last_gaussians(seqs), full):
            assert last.shape == expected.shape
            torch.testing.assert_close(last, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_name", ["sasrec", "coserec", "stosa", "mstein"])
@pytest.mark.parametrize("compat,layers", [("none", 1), ("none", 3), ("original", 2)])
def test_scores_equal_those_of_the_full_encoder(model_name, compat, layers):
    # scoring computes only the last position in the last layer: the scores must be those of the
    # last position of the full [B, L] encoder (float64, fresh random weights, ragged rows)
    torch.manual_seed(3)
    cfg = TrainConfig(model=model_name, hidden_size=8, max_seq_length=9, num_hidden_layers=layers, backend="torch",
                      compat=compat, num_attention_heads=2, temperature=0.5)
    model = build_model(model_name, 25, cfg.model_config()).double().eval()
    with torch.no_grad():  # away from the init's near-zero weights, so that every term counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    b, L = 13, 9
    lengths = torch.randint(0, L + 1, (b,))
    lengths[:3] = torch.tensor([0, L, 1])
    seqs = torch.randint(1, 26, (b, L)).masked_fill(torch.arange(L) < (L - lengths).unsqueeze(1), 0)
    with torch.no_grad():
        scores = model.score_items(seqs, include_padding=True)
        if model.distributional:
            mean, cov = (t[:, -1] for t in model.encode(seqs))
            item_mean, item_cov = model.item_mean.weight, elu_plus_one(model.item_cov.weight)
            expected = -reference.pairwise_w2(mean, cov, item_mean, item_cov)
        else:
            expected = model.encode(seqs)[:, -1] @ model.item_emb.weight.T
    assert scores.shape == (b, 26)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif("cpp" not in mstein_fast.available_backends(), reason="C++ extension not built")
def test_fused_padding_embedding_equals_the_separate_ops(monkeypatch):
    # the views' leading padding is embedded by one position_dropout pass (float32 CPU) instead of
    # repeat + dropout + activation: the same dropout masks (outputs bit for bit) and the same
    # gradients up to the order of the sums over rows
    import mstein_fast.models.stosa as stosa_module

    cfg = TrainConfig(model="mstein", hidden_size=16, max_seq_length=12, backend="cpp", temperature=0.5,
                      hidden_dropout_prob=0.3)
    torch.manual_seed(4)
    model = build_model("mstein", 40, cfg.model_config()).train()
    lengths = torch.randint(1, 8, (48, 1))
    seqs = torch.randint(1, 41, (48, 12)).masked_fill(torch.arange(12) < 12 - lengths, 0)
    results, calls = [], []
    fused_op = stosa_module.position_dropout
    monkeypatch.setattr(stosa_module, "position_dropout", lambda *a, **k: calls.append(1) or fused_op(*a, **k))
    for fused in (True, False):
        if not fused:
            assert len(calls) == 2  # the fused pass ran, once per stream
            monkeypatch.setattr(stosa_module, "position_dropout_usable", lambda t: False)
        model.zero_grad()
        torch.manual_seed(5)
        mean, cov = model.encode_fast(seqs)
        model._wasserstein_infonce(mean, cov).backward()
        results.append((mean.detach(), cov.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None}))
    (m1, c1, g1), (m2, c2, g2) = results
    assert torch.equal(m1, m2) and torch.equal(c1, c2)
    assert g1.keys() == g2.keys() and "position_mean.weight" in g1
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif("cpp" not in mstein_fast.available_backends(), reason="C++ extension not built")
def test_self_only_attention_fuses_value_and_output_layers(monkeypatch):
    # padding positions attend to themselves: the value projection and the output layer run as one
    # feed_forward op (hidden activation none / ELU + 1), bit for bit the two dense layers
    import mstein_fast.models.layers as layers_module

    cfg = TrainConfig(model="mstein", hidden_size=16, max_seq_length=12, backend="cpp", hidden_dropout_prob=0.3)
    torch.manual_seed(6)
    attention = build_model("mstein", 40, cfg.model_config()).attention[0].train()
    mean = torch.randn(3, 7, 16, requires_grad=True)
    cov = (torch.rand(3, 7, 16) + 0.1).requires_grad_()
    upstream = [torch.randn(3, 7, 16), torch.randn(3, 7, 16)]
    results, calls = [], []
    fused = layers_module.feed_forward
    monkeypatch.setattr(layers_module, "feed_forward", lambda *a, **k: calls.append(k) or fused(*a, **k))
    for run in range(2):
        if run == 1:
            assert [c.get("activation") for c in calls] == [None, "elu_plus_one"]
            monkeypatch.setattr(layers_module, "feed_forward", lambda x, w1, b1, w2, b2, activation:
                                layers_module.linear(layers_module.linear(x, w1, b1, activation), w2, b2))
        attention.zero_grad()
        mean.grad = cov.grad = None
        torch.manual_seed(8)
        outs = attention.forward_self_only(mean, cov)
        torch.autograd.backward(outs, upstream)
        results.append([t.detach().clone() for t in outs] + [mean.grad, cov.grad]
                       + [p.grad.clone() for p in attention.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 4
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_padding_pool_without_dropout_equals_the_full_computation():
    # padding_pool only changes which dropout sample a padding position gets: with no dropout every
    # sample is the same and the views are exactly those of the full encoder
    torch.manual_seed(2)
    cfg = TrainConfig(model="mstein", hidden_size=8, max_seq_length=10, backend="torch", padding_pool=3,
                      hidden_dropout_prob=0.0)
    model = build_model("mstein", 30, cfg.model_config()).double().train()
    seqs = torch.randint(1, 31, (16, 10)).masked_fill(torch.arange(10) < torch.randint(0, 11, (16, 1)), 0)
    for fast, full in zip(model.encode_fast(seqs), model.encode(seqs)):
        torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-12)


def test_padding_pool_draws_every_padding_position_from_its_pool():
    torch.manual_seed(3)
    cfg = TrainConfig(model="mstein", hidden_size=8, max_seq_length=12, backend="torch", padding_pool=4,
                      hidden_dropout_prob=0.3)
    model = build_model("mstein", 30, cfg.model_config()).double().train()
    lengths = torch.randint(1, 5, (64, 1))
    seqs = torch.randint(1, 31, (64, 12)).masked_fill(torch.arange(12) < 12 - lengths, 0)
    pool = {}
    original = model._encode_lead

    def recorded(n, width):
        pool["mean"], pool["cov"] = original(n, width)
        return pool["mean"], pool["cov"]

    model._encode_lead = recorded
    mean, cov = model.encode_fast(seqs)
    assert pool["mean"].shape[0] == 4  # the pool: 4 rows of padding only
    lead = 12 - int(lengths.max())  # positions that are padding in every row
    for out, samples in ((mean, pool["mean"]), (cov, pool["cov"])):
        # [rows, positions, K]: which pool samples each padding position equals
        same = (out[:, :lead, None, :] == samples[:, :lead].transpose(0, 1)[None]).all(-1)
        assert bool(same.any(-1).all()), "a padding position is not one of its pool's samples"
        assert len(set(same.int().argmax(-1).flatten().tolist())) > 1, "every row took the same sample"
    (mean.sum() + cov.sum()).backward()
    assert model.position_mean.weight.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", sorted(MODELS))
def test_cuda_training_step(tmp_path, model):
    result = train(tiny_config(model=model, epochs=2, device="cuda"), str(tmp_path))
    assert result["test"]["mrr"] > 0
