"""Parity between this project's MStein in ``compat = "original"`` mode and the original research
code (github zfan20/MStein, a checkout the user gives with ``--original DIR``). The checks:

``transplant`` (seconds): one process builds the original's model (``models.DistSAModel`` of DIR)
and ours (``build_model("mstein", ...)`` with ``compat="original"``), copies our weights into the
original's (:func:`parameter_pairs`), takes ONE training batch of the data (the first ``--users``
users: inputs ``s[:-3]`` left-padded to 50, targets ``s[1:-2]``, one fixed negative per position,
two fixed augmented views drawn with ``mstein_fast.augment.Augmenter``; both sides get the same
tensors) and compares, as ``max |ours - original| / max |original|`` per tensor:

- the encoder's outputs (mean and cov) on the batch and on the views;
- the loss pieces: BPR, pvn, the Wasserstein InfoNCE between the views, and the total
  ``bpr + pvn_weight * pvn + cf_weight * cl`` (the original's from its trainer's own functions,
  ``CoDistSAModelTrainer.bpr_optimization`` and ``._one_pair_contrastive_learning``, called unbound
  with a small stand-in for the trainer; ours from ``model.rec_loss`` and ``model.contrastive_loss``);
- the gradient of every parameter, for four objectives: ``bpr``, ``bpr+pvn`` (pvn weighted 1),
  ``cl`` and ``total`` (ours: ``rec_loss`` with the model's ``pvn_weight`` set to 0, then 1, for the
  first two). A parameter that one side never uses has gradient zero; the original's ``qkv`` pieces
  (``mean_query`` / ``mean_key`` / ``mean_value``, ...) are compared with the rows of our fused
  ``mean_qkv`` / ``cov_qkv``; the original's item tables hold one more row than ours (its mask
  id, ``max_item + 1``, never used by MStein): our gradient is compared with zero there.

Both models run in train mode with every dropout probability 0 (so that train-only code paths
run, deterministically), on the CPU. Tables: float64 with our ``torch`` backend (the math: the
C++ kernels are float32 only, so ``cpp`` is skipped there), then float32 with each backend of
``--backends`` (default ``torch,cpp``; what training runs). Exit status 1 when any error exceeds
``--rtol`` (default 1e-5) in float64 or ``--rtol-float32`` (default 1e-3) in float32, 2 when the
harness cannot run, 0 otherwise. Why two tolerances: in float32 the two codes round differently
(the original expands W2 as ``|m1|^2 + |m2|^2 - 2 m1.m2``, the InfoNCE at temperature 1e-6 has
logits of order 1e6 / (1 + W)); measured on Office's first 256 users: about 2e-5 on the BPR and
pvn gradients and 2e-4 on the InfoNCE's, against about 6e-8 at most in float64 (on the query/key
gradients of the InfoNCE: its logits are of order 1e6, and the masked scores of the padding
queries, -(2**32) + W, keep few digits of W). The original's own float32 result is no closer to its
float64 one (up to 1e-2 on those gradients: in float32 the masked scores lose W entirely), so
float32 alone cannot check the math. ``--checkpoint FILE`` (also for ``dropout``) starts both models
from trained weights, a ``last.pt``/``best.pt`` of a ``--compat original`` run, instead of the seed's
init: float64 still agrees to ~1e-13 there, while float32 drifts further (the InfoNCE of a trained
model under the original's padding semantics is mostly rounding noise in float32, on both codes:
its float32 gradients differ from their own float64 ones by about their size), so the float32
tolerance only holds at init.

``evaluate`` (seconds): the validation and test metrics of a checkpoint the original saved (its
best epoch so far; it writes one at each better validation epoch), computed by our evaluator on our
compat model holding its weights: the test numbers of a run of the original that has not stopped
yet (it tests only once it stops), and a check of the evaluation rules (the validation numbers must
equal its own log line for that epoch).

``curves`` (minutes): the original's ``main.py`` with the official MStein command
(``original_process.OFFICIAL_ARGS``, ``--seed S``) for ``--epochs K``, then ``mstein-fast train --model
mstein --compat original`` with the same epochs, seed and threads (and with ``--also-default`` a
second run of ours without ``--compat``), one after the other; reads the validation metrics per
epoch (ours: ``metrics.jsonl`` of the run directory; the original: its ``{'Epoch': ...}`` log
lines, whose ``HIT@k`` is our ``recall@k`` and whose ``MRR`` is over its top-40 list, our
``mrr@40``) and writes ``OUTPUT/parity_curves.json`` (``{"settings": ..., "original": [...],
"ours_compat": [...], "ours_default": [...]}``, one dict per epoch) and ``OUTPUT/parity_curves.png``
(recall@10, ndcg@10 and mrr@40 per epoch). Run directories: ``OUTPUT/original`` (its log and
checkpoint), ``OUTPUT/ours``, ``OUTPUT/ours_default``. ``--original-log FILE`` takes the original's
curve from a saved stdout of its ``main.py`` (e.g. a full run to its early stopping in the
background, same command and seed) instead of running it again. ``--original-float64`` runs the
original with torch's default dtype float64 (its shims set it; a diagnostic of what its float32
rounding does, about 4x slower here).

    python -m benchmarks.parity --original /path/to/MStein transplant
    python -m benchmarks.parity --original /path/to/MStein transplant --dtypes float32 --backends cpp --json t.json
    python -m benchmarks.parity --original /path/to/MStein --seed 3 transplant --checkpoint run/last.pt --dtypes float64
    python -m benchmarks.parity --original /path/to/MStein curves --epochs 20 --output parity-out --also-default
    python -m benchmarks.parity band out-s1 out-s2 out-s3 --output band   # curves runs with --seed 1, 2, 3
    python -m benchmarks.parity --original /path/to/MStein views --draws 5
    python -m benchmarks.parity --original /path/to/MStein dropout --draws 30 --dtype float32 --backend cpp
    python -m benchmarks.parity --original /path/to/MStein --seed 1 bisect --swap model --epochs 30 \
        --against out-s1 --output bisect-model-s1    # then: band bisect-model-s1 bisect-model-s2 ...

``dropout`` (a minute or two): the transplant's batch and weights with the official dropout on,
``--draws`` training steps a side (``torch.manual_seed`` per draw, the weights never updated): the
loss pieces' means compared by a z-test, and each parameter's gradient of the total by
:func:`mean_shift` (about 1 when both sides draw from one distribution) and its noise by
:func:`spread_ratio` (about 1 likewise): what a dropout in another place, with another scale, or
with masks shared or correlated where the original draws them apart, would change, and what the
dropout-free transplant cannot see. Exit status 1 when a loss's z exceeds ``--z-max`` (4), a mean
shift ``--shift-max`` (2), or a spread ratio lies outside ``1/--spread-max .. --spread-max`` (1.5).

``views`` (a minute): the augmentations' distribution over a whole data set, which a one-batch
check cannot show: two views of every training input drawn ``--draws`` times by the original's
``datasets.RecWithContrastiveLearningDataset`` (its ``Random`` augmentation with the official
settings and its own ItemCF-IUF model: the warm-up) and by our ``Augmenter`` in compat mode; per
view, averaged over the data (:func:`view_stats`): non-padding items, zeros inside, items not in the
input, first and last item kept; a table with each side's mean and spread over the draws and
``z = |difference| / standard error``; exit status 1 when any z exceeds ``--z-max`` (default 4).

``bisect`` (minutes): our compat trainer (``mstein_fast.train.Trainer``: its epochs, batches,
seeds, optimizer loop and evaluator) for ``--epochs K`` with parts of the original swapped in,
``--swap`` a comma-separated list of: ``views`` (the augmented views drawn by the original's
dataset code, :func:`original_view_maker`, Python's ``random``), ``negatives`` (drawn as its
``neg_sample``, :func:`python_negatives`), ``losses`` (its BPR/pvn and InfoNCE functions on our
encoder's outputs: :class:`OriginalLossesStep`), ``init`` (our model, starting from the weights the
original's ``DistSAModel`` gets from its own init code under the seed), ``model`` (its ``DistSAModel`` initialised by its own
code, its BPR/pvn and InfoNCE functions, an Adam on its parameters: :class:`OriginalModel`); and
``--no-cpp``: our C++ extension off (PyTorch's dropout, Wasserstein ops and ranking). Where the
compat curves lag the original's, the part whose swap closes the gap is where the difference
lives, provided both sides start from the same init draws: ``model`` brings the original's draws
with it, every other part keeps ours, and over the first ~30 epochs the curves follow the init draw
closely (on Office the whole "lag" of seeds 1-3 was that, docs/fidelity.md; compare with and without
``init``). ``--against CURVES`` (optional): a ``curves`` run of the same seed, whose original curve is copied into
``OUTPUT/parity_curves.json`` beside the new run's (as ``ours_compat``), so that ``band`` reads
bisect outputs as it reads curves outputs. Run directory: ``OUTPUT/ours``.

``band`` (seconds; neither the original nor the data needed): the original's seed-to-seed band
against our compat curves, from ``curves`` runs with different ``--seed`` (:func:`seed_band`):
``OUTPUT/seed_band.json`` (per epoch and metric: the original's min / max / mean / std over its
seeds, ours per seed and their mean) and ``OUTPUT/seed_band.png`` (the band shaded, our curves over
it), and a table: the fraction of epochs with our mean within the band, the fraction of our (seed,
epoch) points within it next to the fraction expected if ours were draws from the original's own
distribution ((n - 1) / (n + 1) for n seeds: 50% for three), the mean gap and the seed stds.

Nothing of the original is copied here: its modules are imported at run time from DIR
(``transplant``, ``dropout``, ``views``, ``bisect``) or its ``main.py`` is run in a subprocess (``curves``, by
``original_process.py``). It needs numpy, scipy, tqdm and torch; scipy (imported by its ``utils.py``) may come from a directory given
with ``--original-deps DIR`` (put on ``sys.path`` / the subprocess's ``PYTHONPATH``). The only run-time
patches: numpy's removed aliases (``np.float``, ``np.int``, ...) are restored, and an empty module
stands in for ``gensim`` (imported, never used by the MStein command).
"""

# The modules: common (paths, errors, the compared metrics), original (the original's code imported
# in this process), original_process (its main.py run in a subprocess, timed from its log lines),
# mapping (the parameter pairs, weight copies), stats, one module per command (transplant, evaluate,
# curves, dropout, views, bisection, band) and cli (the parser); __main__ runs cli.main.
