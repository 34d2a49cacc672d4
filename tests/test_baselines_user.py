"""The two baselines with a user embedding, BPRMF and Caser: shapes, their losses against float64
formulas, a training step, full ranking with the users' rows, exact resume, and the command line
(train, recommend --all-users, evaluate) on a tiny synthetic data set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mstein_fast
from mstein_fast.checkpoint import load_checkpoint
from mstein_fast.cli import main
from mstein_fast.config import MODEL_PRESETS, build_config
from mstein_fast.contracts import ModelConfig
from mstein_fast.data import Sequences, leave_one_out
from mstein_fast.errors import Interrupted, UserError
from mstein_fast.evaluate import evaluate_ranks
from mstein_fast.models import Caser, build_model, needs_users
from mstein_fast.train import Trainer, train, training_item_keys

USER_MODELS = ["bprmf", "caser"]
N_ITEMS, N_USERS = 20, 7


def small(name: str, **over) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_size=6, max_seq_length=8, hidden_dropout_prob=0.0, caser_window=3, caser_nh=2,
                      caser_nv=3, **over)
    return build_model(name, N_ITEMS, cfg, n_users=N_USERS)


def batch():
    seqs = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5], [0, 0, 1, 2, 3, 4, 5, 6], [9, 8, 7, 6, 5, 4, 3, 2]])
    targets = torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6], [0, 0, 2, 3, 4, 5, 6, 7], [8, 7, 6, 5, 4, 3, 2, 1]])
    negatives = torch.tensor([[0, 0, 0, 0, 0, 11, 12, 13], [0, 0, 14, 15, 16, 17, 18, 19],
                              [20, 11, 12, 13, 14, 15, 16, 17]])
    users = torch.tensor([4, 0, 6])
    return seqs, targets, negatives, users


@pytest.mark.parametrize("name", USER_MODELS)
def test_shapes_and_the_users_they_need(name):
    model = small(name)
    seqs, targets, negatives, users = batch()
    assert model.needs_users and needs_users(name) and not needs_users("sasrec")
    loss, parts = model.rec_loss(seqs, targets, negatives, users=users)
    assert loss.shape == () and torch.isfinite(loss)
    assert model.score_items(seqs, users=users).shape == (3, N_ITEMS)
    with_padding = model.score_items(seqs, include_padding=True, users=users)
    assert with_padding.shape == (3, N_ITEMS + 1)
    assert torch.allclose(with_padding[:, 1:], model.score_items(seqs, users=users))
    assert model.contrastive_loss(seqs) is None
    width = 6 if name == "bprmf" else 12  # caser scores [z ; user]: twice the hidden size
    assert model.user_vectors(seqs, users).shape == (3, width)
    with pytest.raises(ValueError, match="a history alone has no user"):
        model.score_items(seqs)
    with pytest.raises(ValueError, match="user rows must be in 0..6"):
        model.score_items(seqs, users=torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="needs n_users"):
        build_model(name, N_ITEMS, ModelConfig(hidden_size=6))


def test_bprmf_loss_is_bpr_over_the_real_targets():
    model = small("bprmf").double()
    seqs, targets, negatives, users = batch()
    loss, _ = model.rec_loss(seqs, targets, negatives, users=users)
    U, V = model.user_emb.weight.detach(), model.item_emb.weight.detach()
    terms = []
    for b in range(3):
        for t in range(targets.shape[1]):
            if targets[b, t]:
                diff = U[users[b]] @ V[targets[b, t]] - U[users[b]] @ V[negatives[b, t]]
                terms.append(-np.log(1.0 / (1.0 + np.exp(-diff.item()))))
    assert loss.item() == pytest.approx(float(np.mean(terms)), rel=1e-12)
    # not sequential: the score ignores the history, only the user counts
    other = torch.randint(1, N_ITEMS + 1, seqs.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(model.score_items(seqs, users=users), model.score_items(other, users=users))
    assert torch.allclose(model.score_items(seqs, users=users), U[users] @ V[1:].T)


def caser_x(model: Caser, window: torch.Tensor, user: int) -> torch.Tensor:
    """Independent float64 Caser of one window ``[L]``: the convolutions by F.conv2d on the embedding
    matrix (as the paper and its authors' code write them), then the dense layer and the user."""
    E = model.item_emb.weight.detach()[window].unsqueeze(0).unsqueeze(0)  # [1, 1, L, d]
    L, d = window.shape[0], E.shape[-1]
    v = model.vertical
    out_v = F.conv2d(E, v.weight.detach().reshape(-1, 1, L, 1), v.bias.detach()).reshape(-1)  # [n_v * d]
    pooled = []
    for h, layer in enumerate(model.horizontal, start=1):
        conv = F.conv2d(E, layer.weight.detach().reshape(-1, 1, h, d), layer.bias.detach())[0, :, :, 0]
        pooled.append(torch.relu(conv).max(dim=1).values)
    z = torch.relu(model.fc.weight.detach() @ torch.cat([out_v, *pooled]) + model.fc.bias.detach())
    return torch.cat([z, model.user_emb.weight.detach()[user]])


def test_caser_loss_is_the_papers_bce_on_each_positions_window():
    model = small("caser").double()
    seqs, targets, negatives, users = batch()
    loss, _ = model.rec_loss(seqs, targets, negatives, users=users)
    W, bias = model.out_emb.weight.detach(), model.out_bias.weight.detach()[:, 0]
    L = 3
    terms = []
    for b in range(3):
        padded = torch.cat([torch.zeros(L - 1, dtype=torch.int64), seqs[b]])
        for t in range(seqs.shape[1]):
            if targets[b, t]:
                x = caser_x(model, padded[t:t + L], int(users[b]))  # the L items ending at position t
                pos = (x @ W[targets[b, t]] + bias[targets[b, t]]).item()
                neg = (x @ W[negatives[b, t]] + bias[negatives[b, t]]).item()
                terms.append(-np.log(1 / (1 + np.exp(-pos))) - np.log(1 - 1 / (1 + np.exp(-neg))))
    assert loss.item() == pytest.approx(float(np.mean(terms)), rel=1e-10)
    # scoring reads the last L items of the history and the user
    scores = model.score_items(seqs, users=users)
    for b in range(3):
        x = caser_x(model, seqs[b, -L:], int(users[b]))
        assert torch.allclose(scores[b], W[1:] @ x + bias[1:], rtol=1e-10)
    short = torch.tensor([[4, 5]])  # fewer than L items: padded on the left
    assert torch.allclose(model.score_items(short, users=torch.tensor([2]))[0],
                          W[1:] @ caser_x(model, torch.tensor([0, 4, 5]), 2) + bias[1:], rtol=1e-10)


@pytest.mark.parametrize("name", USER_MODELS)
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    model = small(name).train()
    seqs, targets, negatives, users = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before, _ = model.rec_loss(seqs, targets, negatives, users=users)
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after, _ = model.rec_loss(seqs, targets, negatives, users=users)
    assert after.item() < before.item()


def tiny_split():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(np.arange(1, N_ITEMS + 1))[: rng.integers(3, 12)] for _ in range(N_USERS)]
    return seqs, leave_one_out(Sequences(list(range(1, N_USERS + 1)), seqs, N_ITEMS, "test", "x"), max_len=5)


@pytest.mark.parametrize("name", USER_MODELS)
def test_full_ranking_scores_each_users_row_with_seen_items_masked(name):
    seqs, split = tiny_split()
    model = small(name).eval()
    for which, cut in (("valid", -2), ("test", -1)):
        inputs, targets, _ = split.eval_arrays(which)
        expected = {}
        for u, s in enumerate(seqs):
            scores = model.score_items(inputs[u:u + 1], users=torch.tensor([u]))[0].detach()
            scores[torch.from_numpy(s[:cut] - 1)] = float("-inf")
            expected[u] = sorted(range(N_ITEMS), key=lambda j: (-scores[j].item(), j)).index(int(s[cut]) - 1)
        subset = torch.tensor([5, 2, 6, 0])  # the users argument: rows of the split, in any order
        for bs in (1, 3, None):
            assert evaluate_ranks(model, split, which, bs).tolist() == [expected[u] for u in range(N_USERS)]
            ranks = evaluate_ranks(model, split, which, bs, users=subset)
            assert ranks.tolist() == [expected[u] for u in subset.tolist()]


def test_the_negatives_of_a_user_model_avoid_only_the_training_items():
    seqs, split = tiny_split()
    data = Sequences(list(range(1, N_USERS + 1)), seqs, N_ITEMS, "test", "x")
    keys = training_item_keys(data)
    expected = sorted({u * (N_ITEMS + 1) + int(i) for u, s in enumerate(seqs) for i in s[:-2]})
    assert keys.tolist() == expected
    assert set(expected) < set(split.user_item_keys.tolist())  # the sequential models' rule avoids more


TINY = {"synthetic_users": 200, "synthetic_items": 60, "synthetic_clusters": 4, "max_seq_length": 20,
        "hidden_size": 16, "batch_size": 64, "lr": 0.005, "patience": 100, "progress": False, "device": "cpu"}


def read_metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as fh:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in fh]


@pytest.mark.parametrize("name, lr, epochs", [("bprmf", 0.05, 15), ("caser", 0.005, 20)])
def test_they_learn_on_the_tiny_synthetic_data(tmp_path, name, lr, epochs):
    # each user embedding gets one Adam step per epoch (batches of users), so these two need more
    # steps than the 6 epochs of tests/test_train.py's check for the sequential models
    result = train(build_config(None, {**TINY, "model": name, "epochs": epochs, "lr": lr})[0], str(tmp_path))
    records = read_metrics(tmp_path)
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert max(r["valid"]["mrr"] for r in records) > 1.2 * records[0]["valid"]["mrr"]
    if name == "caser":  # sequential: it beats popularity (measured 0.26 against 0.18); BPRMF about equals it
        assert result["test"]["mrr"] > 1.1 * result["popularity_test"]["mrr"]


@pytest.mark.parametrize("name", USER_MODELS)
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, ctrl_c_at_batch, name):
    cfg = build_config(None, {**TINY, "model": name, "epochs": 3})[0]
    assert all(getattr(cfg, k) == v for k, v in MODEL_PRESETS[name].items() if k not in TINY and k != "epochs")
    full = train(cfg, str(tmp_path / "full"))
    assert load_checkpoint(str(tmp_path / "full"))["n_users"] == 200

    ctrl_c_at_batch(10)  # Ctrl-C in the middle of epoch 3 (4 batches per epoch)
    with pytest.raises(Interrupted, match="last.pt holds epoch 2"):
        train(cfg, str(tmp_path / "cut"))
    ctrl_c_at_batch(None)
    resumed = Trainer(cfg, str(tmp_path / "cut"), resume=True).fit()
    assert resumed == full
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "full")


@pytest.mark.parametrize("name", USER_MODELS)
def test_command_line_train_recommend_evaluate(tmp_path, capsys, name):
    run = tmp_path / "run"
    argv = ["train", "--model", name, "--synthetic-users", "120", "--synthetic-items", "40", "--synthetic-clusters",
            "3", "--max-seq-length", "10", "--hidden-size", "8", "--batch-size", "64", "--epochs", "2",
            "--no-progress", "--device", "cpu", "--num-threads", "1", "--output", str(run)]
    assert main(argv) == 0
    capsys.readouterr()
    result = json.loads((run / "test_metrics.json").read_text())
    assert result["model"] == name

    out = tmp_path / "recs.tsv"
    assert main(["recommend", str(run), "--all-users", "-k", "3", "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    lines = out.read_text().splitlines()
    assert lines[0] == "user\trank\titem\tscore" and len(lines) == 1 + 120 * 3

    assert main(["evaluate", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test"] == result["test"] and evaluated["valid"] == result["valid"]

    # the API: a history alone has no user; the training users' rows are passed for them
    trained = mstein_fast.load(str(run))
    users, histories = trained.user_histories()
    with pytest.raises(UserError, match="--user ID / --all-users"):
        trained.recommend(histories[:2])
    items, scores = trained.recommend(histories, k=3, users=users)
    ids, items_u, scores_u = trained.recommend_users(k=3)
    assert ids == users and np.array_equal(items, items_u) and np.array_equal(scores, scores_u)
    rows = [line.split("\t") for line in lines[1:4]]
    assert [int(r[2]) for r in rows] == items[0].tolist() and rows[0][0] == str(users[0])
    for r, history in enumerate(histories):
        assert not set(items[r].tolist()) & set(history.tolist())  # seen items never recommended
    vectors, item_vectors = trained.embed(histories, users=users), trained.item_embeddings()
    expected = vectors["vector"] @ item_vectors["vector"].T + item_vectors.get("bias", 0.0)
    assert np.allclose(scores[0], expected[0][items[0] - 1], atol=1e-5)
    top = np.argsort(-np.where(np.isin(np.arange(1, 41), histories[0]), -np.inf, expected[0]), kind="stable")[:3] + 1
    assert top.tolist() == items[0].tolist()
