"""The built-in synthetic data set: deterministic sequences with structure a sequential model can learn."""

from __future__ import annotations

import hashlib

import numpy as np

from mstein_fast.data.io import MIN_INTERACTIONS, Sequences
from mstein_fast.memory import check_bytes, synthetic_bytes


def synthetic_sequences(
    n_users: int = 2000,
    n_items: int = 500,
    n_clusters: int = 20,
    min_length: int = 5,
    max_length: int = 30,
    follow_prob: float = 0.5,
    seed: int = 0,
) -> Sequences:
    """A deterministic synthetic data set with structure a sequential model can learn.

    Items fall into ``n_clusters`` latent clusters with Zipf-like popularity; inside each cluster
    the items form a cycle of successors. A user prefers one cluster and walks: with probability
    ``follow_prob`` to the successor of the current item (the sequential signal), otherwise to a
    popularity-weighted item of the preferred cluster (70%) or of any cluster (30%, noise). Items
    are not repeated within a user. Popularity ranking therefore scores poorly while a model of
    the transitions scores well. Lengths are drawn log-uniformly in ``[min_length, max_length]``.

    A request whose sequences would not fit in the available memory is refused before drawing
    (:func:`mstein_fast.memory.synthetic_bytes`). The users are drawn one at a time in Python,
    a few thousand a second: the largest requests that fit (millions of users) take many minutes.
    """
    if n_items < 2 * n_clusters or n_clusters < 1:
        raise ValueError("synthetic data needs n_clusters >= 1 and at least 2 items per cluster")
    if not 3 <= min_length <= max_length:
        raise ValueError("synthetic data needs 3 <= min_length <= max_length")
    check_bytes(synthetic_bytes(n_users, max_length) + 64 * n_items, "the synthetic data set",
                f"{n_users} users of up to {max_length} items, {n_items} items", "use fewer synthetic_users")
    rng = np.random.default_rng(seed)
    cluster = rng.permutation(np.arange(n_items) % n_clusters)  # cluster of item index i (id i + 1)
    popularity = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.8
    successor = np.empty(n_items, dtype=np.int64)
    # the items of each cluster, ascending (a stable sort by cluster: linear in the items, not
    # items x clusters as one comparison per cluster would be)
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(n_clusters + 1))
    members = [order[bounds[c]:bounds[c + 1]] for c in range(n_clusters)]
    for m in members:
        cycle = rng.permutation(m)
        successor[cycle] = np.roll(cycle, -1)
    # popularity-weighted sampling tables: one for all items, one per cluster
    global_p = popularity / popularity.sum()
    cluster_p = [popularity[m] / popularity[m].sum() for m in members]

    lengths = np.exp(rng.uniform(np.log(min_length), np.log(max_length + 1), size=n_users)).astype(np.int64)
    lengths = np.clip(lengths, min_length, max_length)
    pref = rng.integers(0, n_clusters, size=n_users)
    seqs = []
    for u in range(n_users):
        seen: set[int] = set()
        m, p = members[pref[u]], cluster_p[pref[u]]
        cur = int(rng.choice(m, p=p))
        seq = [cur]
        seen.add(cur)
        while len(seq) < lengths[u]:
            for _ in range(20):  # retry a few times to avoid repeats
                r = rng.random()
                if r < follow_prob:
                    nxt = int(successor[cur])
                elif r < follow_prob + (1 - follow_prob) * 0.7:
                    nxt = int(rng.choice(m, p=p))
                else:
                    nxt = int(rng.choice(n_items, p=global_p))
                if nxt not in seen:
                    break
            else:
                break  # cluster exhausted: end this user's sequence
            seq.append(nxt)
            seen.add(nxt)
            cur = nxt
        seqs.append(np.asarray(seq, dtype=np.int64) + 1)
    keep = [s for s in seqs if len(s) >= MIN_INTERACTIONS]
    user_ids = [u + 1 for u, s in enumerate(seqs) if len(s) >= MIN_INTERACTIONS]
    desc = (
        f"synthetic(n_users={n_users}, n_items={n_items}, n_clusters={n_clusters}, "
        f"length={min_length}..{max_length}, follow_prob={follow_prob}, seed={seed})"
    )
    digest = hashlib.sha1(np.concatenate(keep).tobytes() + desc.encode()).hexdigest()
    return Sequences(user_ids, keep, n_items, desc, digest, len(seqs) - len(keep))
