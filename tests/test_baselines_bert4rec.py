"""BERT4Rec: shapes, the Cloze masks, the loss against a forward pass written out with plain torch
ops, a training step, full ranking with seen items excluded, the mask token appended for scoring,
exact resume, the command line."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mstein_fast
from mstein_fast.cli import main
from mstein_fast.config import MODEL_PRESETS, ConfigError, TrainConfig, build_config
from mstein_fast.data import Sequences, leave_one_out
from mstein_fast.evaluate import evaluate_ranks
from mstein_fast.contracts import ModelConfig
from mstein_fast.models import build_model
from mstein_fast.models.bert4rec import LAST_ITEM_SHARE, BERT4Rec
from mstein_fast.train import Interrupted, Trainer, load_checkpoint, train

TINY = {"synthetic_users": 100, "synthetic_items": 60, "synthetic_clusters": 4, "max_seq_length": 10,
        "hidden_size": 8, "batch_size": 32, "lr": 0.005, "patience": 100, "progress": False, "device": "cpu",
        "backend": "torch"}
N_ITEMS = 20
BATCH = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8]])
TARGETS = torch.tensor([[0, 0, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 8, 9]])


def small_model(dropout=0.0, layers=2, hidden=8, dtype=torch.float32, **over):
    torch.manual_seed(0)
    cfg = TrainConfig(model="bert4rec", hidden_size=hidden, max_seq_length=6, num_hidden_layers=layers,
                      backend="torch", hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **over)
    return build_model("bert4rec", N_ITEMS, cfg.model_config()).to(dtype)


def by_hand(model, rows):
    """``[B, L, H]`` encoder outputs of ``rows``, written out with plain torch ops from the model's
    weights (no dropout: eval mode): embeddings + positions, LayerNorm, then per layer multi-head
    attention over the row's non-padding positions (both directions) and the GELU feed-forward
    block, each with a residual and a LayerNorm."""
    def norm(x, ln):
        return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)

    b, L = rows.shape
    x = norm(model.item_emb.weight[rows] + model.position_emb.weight[:L], model.embed_norm)
    keys = rows > 0
    for att, ffn in zip(model.attention, model.ffn):
        heads, hd = att.heads, att.head_dim
        q, k, v = (x @ att.qkv.weight.T + att.qkv.bias).split(x.shape[-1], -1)
        ctx = torch.zeros_like(x)
        for r in range(b):
            for h in range(heads):
                cols = slice(h * hd, (h + 1) * hd)
                scores = q[r, :, cols] @ k[r, :, cols].T / math.sqrt(hd)
                scores = scores.masked_fill(~keys[r].unsqueeze(0), float("-inf"))
                ctx[r, :, cols] = torch.softmax(scores, -1) @ v[r, :, cols]
        x = norm(ctx @ att.dense.weight.T + att.dense.bias + x, att.norm)
        hidden = F.gelu(x @ ffn.dense_1.weight.T + ffn.dense_1.bias)
        x = norm(hidden @ ffn.dense_2.weight.T + ffn.dense_2.bias + x, ffn.norm)
    return x


def logits_by_hand(model, out):
    """The output layer: ``LayerNorm(GELU(W h + b)) @ E[1..n].T + bias[1..n]``."""
    z = F.gelu(out @ model.out_dense.weight.T + model.out_dense.bias)
    z = F.layer_norm(z, z.shape[-1:], model.out_norm.weight, model.out_norm.bias, model.out_norm.eps)
    return z @ model.item_emb.weight[1:N_ITEMS + 1].T + model.out_bias[1:]


def test_output_shapes_and_the_registry():
    model = small_model()
    assert isinstance(model, BERT4Rec) and model.contrastive is None and not model.needs_users
    assert model.mask_token == N_ITEMS + 1 and model.item_emb.weight.shape == (N_ITEMS + 2, 8)
    assert model.encode(BATCH).shape == (3, 6, 8)
    assert model.encode(BATCH, last_only=True).shape == (3, 1, 8)
    assert model.score_items(BATCH).shape == (3, N_ITEMS)
    assert model.score_items(BATCH, include_padding=True).shape == (3, N_ITEMS + 1)
    rec, parts = model.rec_loss(BATCH, TARGETS, torch.ones_like(TARGETS))
    assert rec.shape == () and set(parts) == {"ce"} and torch.isfinite(rec)
    assert model.contrastive_loss(torch.cat([BATCH, BATCH])) is None
    vectors = model.item_vectors()  # the mask token's row is not an item
    assert vectors["vector"].shape == (N_ITEMS, 8) and vectors["bias"].shape == (N_ITEMS,)
    assert model.training_rows(BATCH, TARGETS).tolist() == [[0, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6, 7],
                                                            [0, 0, 0, 7, 8, 9]]


def test_mask_ratio_is_a_validated_key_with_the_recbole_preset():
    assert TrainConfig().mask_ratio == 0.2
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="mask_ratio must be in"):
            TrainConfig(model="bert4rec", mask_ratio=bad).validate()
    cfg = build_config(None, {"model": "bert4rec"})[0]
    assert {k: getattr(cfg, k) for k in MODEL_PRESETS["bert4rec"]} == {
        "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64, "hidden_dropout_prob": 0.2,
        "attention_probs_dropout_prob": 0.2, "mask_ratio": 0.2}
    assert cfg.max_seq_length == 50 and cfg.lr == 0.001
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        BERT4Rec(10, TrainConfig(mask_ratio=1.0).model_config())


def test_cloze_masks():
    model = small_model(mask_ratio=0.3)
    rows = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 4], [0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]).repeat(2000, 1)
    torch.manual_seed(7)
    mask = model.cloze_mask(rows)
    torch.manual_seed(7)
    assert model.cloze_mask(rows).equal(mask)  # PyTorch's default generator: the trainer's seed decides
    assert not (mask & (rows == 0)).any()  # padding is never masked
    has_items = (rows > 0).any(1)
    assert bool((mask.any(1) == has_items).all())  # every row with items has a masked position
    full = rows[:, 0] > 0
    only_last = mask[:, -1] & ~mask[:, :-1].any(1)
    # last-item rows (share LAST_ITEM_SHARE) plus the Cloze rows that drew nothing, (1 - 0.3)^6 of them
    expected = LAST_ITEM_SHARE + (1 - LAST_ITEM_SHARE) * 0.7 ** 6
    assert abs(only_last[full].float().mean().item() - expected) < 0.03
    # in the other rows each item is masked with probability mask_ratio, earlier ones included
    cloze = full & ~only_last
    assert abs(mask[cloze, :-1].float().mean().item() - 0.3 / (1 - 0.7 ** 6)) < 0.05


def test_the_loss_is_the_cross_entropy_at_the_masked_positions_by_hand():
    model = small_model(layers=2, hidden=4, dtype=torch.float64).eval()
    with torch.no_grad():  # a non-zero output bias, so that the test sees it
        model.out_bias.normal_(0.0, 0.5)
    torch.manual_seed(3)
    rows = model.training_rows(BATCH, TARGETS)
    mask = model.cloze_mask(rows)
    assert mask.sum() >= 3
    masked = torch.where(mask, torch.full_like(rows, N_ITEMS + 1), rows)
    out = by_hand(model, masked)
    terms = []
    for r, c in mask.nonzero().tolist():
        logits = logits_by_hand(model, out[r, c])
        terms.append(torch.logsumexp(logits, 0) - logits[rows[r, c] - 1])
    expected = torch.stack(terms).mean()
    torch.manual_seed(3)  # the same draw inside rec_loss
    loss, parts = model.rec_loss(BATCH, TARGETS, torch.zeros_like(TARGETS))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert parts["ce"].item() == loss.item()
    empty = torch.zeros(2, 6, dtype=torch.long)  # no training items: nothing masked, loss 0
    assert model.rec_loss(empty, empty, empty)[0].item() == 0.0


def test_the_mask_token_is_appended_for_scoring():
    model = small_model(layers=1, hidden=4, dtype=torch.float64).eval()
    with torch.no_grad():
        model.out_bias.normal_(0.0, 0.5)
    mask = N_ITEMS + 1
    rows = model.append_mask(BATCH)
    # a full-length history loses its oldest item; the others lose a padding column
    assert rows.tolist() == [[0, 3, 4, 5, 6, mask], [2, 3, 4, 5, 6, mask], [0, 0, 0, 7, 8, mask]]
    scores = model.score_items(BATCH)
    expected = logits_by_hand(model, by_hand(model, rows)[:, -1])
    assert torch.allclose(scores, expected, rtol=1e-10, atol=1e-12)
    # bidirectional: the output at an item's position depends on the items after it
    changed = rows.clone()
    changed[:, -2] = 11
    assert not torch.allclose(model.encode(rows)[:, 2], model.encode(changed)[:, 2])
    # a shorter input gets the mask token after it without dropping anything
    assert model.append_mask(torch.tensor([[5, 6]])).tolist() == [[5, 6, mask]]


def test_one_training_step_reduces_the_loss_on_a_fixed_batch():
    model = small_model().eval()
    rows = model.training_rows(BATCH, TARGETS)
    torch.manual_seed(0)
    mask = model.cloze_mask(rows)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before = model.cloze_loss(rows, mask)
    optimizer.zero_grad()
    before.backward()
    assert model.out_bias.grad.abs().sum() > 0 and model.item_emb.weight.grad[N_ITEMS + 1].abs().sum() > 0
    optimizer.step()
    with torch.no_grad():
        assert model.cloze_loss(rows, mask).item() < before.item()


def test_full_ranking_excludes_seen_items():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(np.arange(1, 21))[: rng.integers(3, 12)] for _ in range(17)]
    seqs[0] = np.array([5, 6, 5, 7, 5])  # a repeated target: a miss
    split = leave_one_out(Sequences(list(range(1, 18)), seqs, 20, "test", "x"), max_len=6)
    model = small_model().eval()
    for which, cut in (("valid", -2), ("test", -1)):
        with torch.no_grad():
            scores = model.score_items(split.eval_arrays(which)[0])
        expected = []
        for u, s in enumerate(seqs):
            row = scores[u].clone()
            row[torch.from_numpy(s[:cut] - 1)] = float("-inf")  # seen items rank last
            target = s[cut]
            if target in s[:cut]:
                expected.append(mstein_fast.evaluate.MISS_RANK)
                continue
            order = sorted(range(20), key=lambda j: (-row[j].item(), j))
            expected.append(order.index(target - 1))
        assert evaluate_ranks(model, split, which, batch_size=5).tolist() == expected


def read_metrics(run_dir):
    with open(run_dir / "metrics.jsonl") as fh:
        return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in fh]


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, ctrl_c_at_batch):
    cfg = build_config(None, {**TINY, "model": "bert4rec", "epochs": 4})[0]
    assert cfg.hidden_dropout_prob == 0.2  # 4 batches per epoch (100 users), dropout and masks drawn in each
    full = train(cfg, str(tmp_path / "full"))
    ctrl_c_at_batch(10)  # Ctrl-C in the middle of epoch 3
    with pytest.raises(Interrupted, match="last.pt holds epoch 2; continue with"):
        train(cfg, str(tmp_path / "cut"))
    ctrl_c_at_batch(None)
    assert load_checkpoint(str(tmp_path / "cut" / "last.pt"))["epoch"] == 2
    resumed = Trainer(cfg, str(tmp_path / "cut"), resume=True).fit()
    assert resumed == full
    records = read_metrics(tmp_path / "full")
    assert read_metrics(tmp_path / "cut") == records
    assert all(r["cl_loss"] is None for r in records)
    assert len({r["rec_loss"] for r in records}) == 4  # (each epoch draws other masks)


def test_train_from_the_command_line_and_use(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--model", "bert4rec", "--output", str(out), "--synthetic-users", "120",
                 "--synthetic-items", "40", "--synthetic-clusters", "3", "--max-seq-length", "10", "--hidden-size",
                 "8", "--batch-size", "64", "--epochs", "2", "--mask-ratio", "0.3", "--no-progress",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["mask_ratio"] == 0.3 and saved["num_hidden_layers"] == 2 and saved["hidden_dropout_prob"] == 0.2
    result = json.loads((out / "test_metrics.json").read_text())
    assert result["model"] == "bert4rec" and 0 <= result["test"]["mrr"] <= 1
    model = mstein_fast.load(str(out))
    items, scores = model.recommend([[1, 2, 3], [4]], k=5)
    assert len(items) == 2 and len(items[0]) == 5 and 1 not in list(items[0]) and 4 not in list(items[1])
    assert set(items.ravel()) <= set(range(1, 41))  # never the mask token (41)
    assert model.item_embeddings()["vector"].shape == (40, 8)
    # the representation is the encoder's output at the appended mask token, not at the last item
    vector = model.embed([[1, 2, 3]])["vector"]
    seqs = torch.tensor([[0] * 7 + [1, 2, 3]])
    with torch.no_grad():
        at_mask = model.model.encode(model.model.append_mask(seqs))[:, -1]
        at_last = model.model.encode(seqs)[:, -1]
    np.testing.assert_allclose(vector, at_mask.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(vector, at_last.numpy(), atol=1e-3)


def test_cloze_loss_padding_of_the_masked_rows_changes_nothing():
    """The masked rows are padded to a bucket size before the output layer: the loss and every
    gradient equal the unpadded computation's (float64)."""
    from mstein_fast.models.bert4rec import MASKED_ROWS_BUCKET

    torch.manual_seed(0)
    model = build_model("bert4rec", 30, ModelConfig(hidden_size=8, max_seq_length=12, num_hidden_layers=1,
                                                    num_attention_heads=2, hidden_dropout_prob=0.0,
                                                    attention_probs_dropout_prob=0.0)).double()
    rows = torch.randint(1, 31, (7, 12))
    rows[:3, :4] = 0  # left padding
    mask = torch.rand(7, 12) < 0.3
    mask &= rows > 0
    assert 0 < int(mask.sum()) < MASKED_ROWS_BUCKET  # padded: the case that differs
    loss = model.cloze_loss(rows, mask)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    out = model.encode(rows.masked_fill(mask, model.mask_token))
    direct = torch.nn.functional.cross_entropy(model._logits(out[mask]), rows[mask] - 1)
    direct_grads = torch.autograd.grad(direct, list(model.parameters()))
    torch.testing.assert_close(loss, direct, rtol=1e-12, atol=0)
    for g, d in zip(grads, direct_grads):
        torch.testing.assert_close(g, d, rtol=1e-10, atol=1e-13)
