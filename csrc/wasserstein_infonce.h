// wasserstein_infonce on the CPU: the 2N-row InfoNCE of docs/maths.md on x = [mean ; sqrt(cov)]
// rows (rows of view A first, then view B), without ever forming the logit matrix for large N.
//
// W is symmetric, so the forward visits each pair of row blocks (I <= J) once: the Gram tile
// x_I x_J^T gives W on the tile, its rows feed the online (max, sum-exp) of rows I and its
// columns those of rows J. Each thread keeps its own (max, sum) per row; they are merged at the
// end. Small problems also store the full W (both triangles) so the backward needs no second
// Gram product; large ones recompute tiles (the flash-attention pattern).
//
// Backward: with Q(r, c) = dloss/dW(r, c) summed over both orders (S + S^T),
// dx_r = 2 (sum_c Q(r, c) x_r - sum_c Q(r, c) x_c). Either each thread owns row blocks and forms
// Q_I x (one long product per block; used with the stored W), or it visits block pairs I <= J once
// and adds Q_IJ x_J to rows I and Q_IJ^T x_I to rows J in its own gradient buffer.
//
// All loops use static schedules, so for a given thread count the work each thread sums, and the
// order of every sum, are fixed: results are bitwise reproducible (training runs resume exactly).
#pragma once
#include "gaussian_stack.h"

namespace mstein {
namespace MSTEIN_ISA {

constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

struct Similarity {
  int kind;     // 0: "inv" s = 1 / (1 + W); 1: "neg" s = -W
  float inv_t;  // 1 / temperature
  inline vf logit(vf w) const { return kind == 0 ? inv_t / (1.0f + w) : w * -inv_t; }
  // d logit / d W
  inline vf dlogit(vf w) const {
    if (kind == 0) {
      const vf s = 1.0f / (1.0f + w);
      return s * s * -inv_t;
    }
    return splat(-inv_t);
  }
  // scalar d logit / d W, rounded exactly as the vector version
  inline float dlogit1(float w) const { return dlogit(splat(w))[0]; }
};

// Everything both passes share: packed copies of x, row norms, block bookkeeping.
struct InfoNCEProblem {
  const float* x;
  int64_t n, rows, rows_pad, blocks, k, k_pad;
  Buffer xa, xb;              // the last block's broadcast-panel copy (when partial), vector-panel copy of x
  std::vector<float> norms;   // |x_r|^2, zero for padding rows
  std::vector<std::pair<int32_t, int32_t>> pairs;  // block pairs I <= J

  // pack_gram: make the packed copies needed to recompute W tiles (not needed when W is stored)
  InfoNCEProblem(const float* x_, int64_t n_, int64_t k_, int threads, bool pack_gram)
      : x(x_), n(n_), rows(2 * n_), rows_pad(round_up(2 * n_, BS)), blocks(rows_pad / BS), k(k_),
        k_pad(round_up(k_, NR)), norms(rows_pad, 0.f) {
    for (int32_t i = 0; i < blocks; ++i)
      for (int32_t j = i; j < blocks; ++j) pairs.emplace_back(i, j);
    if (!pack_gram) return;
    // the A side of a Gram tile reads x in place (gram_tile_rows); only a last, partial block
    // needs a zero-padded copy
    if (rows % BS) {
      xa.reset(BS * k);
      pack_a_rows(x + (blocks - 1) * BS * k, rows - (blocks - 1) * BS, k, k, xa.get(), BS);
    }
    xb.reset(rows_pad * k);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t ib = 0; ib < blocks; ++ib) {
      const int64_t r0 = ib * BS, nr = std::min<int64_t>(BS, rows - r0);
      pack_b_rows(x + r0 * k, nr, k, k, xb.get() + r0 * k, BS);
      for (int64_t i = 0; i < nr; ++i) norms[r0 + i] = static_cast<float>(row_sq_norm(x + (r0 + i) * k, k));
    }
  }
  int64_t partner(int64_t r) const { return r < n ? r + n : r - n; }
  int64_t valid(int64_t ib) const { return std::min<int64_t>(BS, rows - ib * BS); }

  // W on block (ib, jb) into tile[BS x BS]: from the stored matrix when given, else recomputed.
  void w_tile(int64_t ib, int64_t jb, const float* stored, float* tile) const {
    const int64_t i0 = ib * BS, j0 = jb * BS, ni = valid(ib), nj = valid(jb);
    if (stored) {
      for (int64_t i = 0; i < BS; ++i) {
        float* t = tile + i * BS;
        if (i < ni) {
          std::memcpy(t, stored + (i0 + i) * rows + j0, nj * sizeof(float));
          std::fill(t + nj, t + BS, 0.f);
        } else {
          std::fill(t, t + BS, 0.f);
        }
      }
      return;
    }
    if (ni == BS)
      gram_tile_rows(x + i0 * k, k, xb.get(), j0, k, tile);
    else
      gram_tile(xa.get(), 0, xb.get(), j0, k, tile);
    for (int64_t i = 0; i < BS; ++i) {
      float* t = tile + i * BS;
      const vf ni_v = splat(norms[i0 + i]);
      for (int64_t j = 0; j < BS; j += VW) storeu(t + j, ni_v + loadu(norms.data() + j0 + j) - 2.0f * loadu(t + j));
    }
  }
};

static void infonce_forward(const float* x, int64_t n, int64_t k, float temperature, int kind, float* losses,
                            float* lse, float* w_out, int threads) {
  InfoNCEProblem pb(x, n, k, threads, true);
  const Similarity sim{kind, 1.0f / temperature};
  const int64_t rows = pb.rows, rows_pad = pb.rows_pad;
  std::vector<float> pos(rows, 0.f);
  Buffer stats(static_cast<size_t>(threads) * 2 * rows_pad);  // per thread: running max, running sum
  int used_threads = 1;
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    const int tid = thread_id();
#ifdef _OPENMP
#pragma omp single
    used_threads = omp_get_num_threads();
#endif
    float* run_max = stats.get() + tid * 2 * rows_pad;
    float* run_sum = run_max + rows_pad;
    std::fill(run_max, run_max + rows_pad, NEG_INF);
    std::fill(run_sum, run_sum + rows_pad, 0.f);
    Buffer tile(BS * BS);
    float* t = tile.get();
#pragma omp for schedule(static)
    for (size_t pi = 0; pi < pb.pairs.size(); ++pi) {
      if (stop_requested()) continue;  // Ctrl-C: the caller discards the outputs
      const int64_t ib = pb.pairs[pi].first, jb = pb.pairs[pi].second;
      const int64_t i0 = ib * BS, j0 = jb * BS, ni = pb.valid(ib), nj = pb.valid(jb);
      pb.w_tile(ib, jb, nullptr, t);
      if (w_out) {
        for (int64_t i = 0; i < ni; ++i) std::memcpy(w_out + (i0 + i) * rows + j0, t + i * BS, nj * sizeof(float));
        if (ib != jb)
          for (int64_t j = 0; j < nj; ++j)
            for (int64_t i = 0; i < ni; ++i) w_out[(j0 + j) * rows + i0 + i] = t[i * BS + j];
      }
      // logits, with padding and the diagonal masked to -inf
      for (int64_t i = 0; i < BS; ++i) {
        float* row = t + i * BS;
        if (i >= ni) {
          std::fill(row, row + BS, NEG_INF);
          continue;
        }
        for (int64_t j = 0; j < BS; j += VW) storeu(row + j, sim.logit(loadu(row + j)));
        std::fill(row + nj, row + BS, NEG_INF);
        if (ib == jb) row[i] = NEG_INF;
      }
      // positives
      for (int64_t i = 0; i < ni; ++i) {
        const int64_t p = pb.partner(i0 + i) - j0;
        if (p >= 0 && p < nj) pos[i0 + i] = t[i * BS + p];
      }
      if (ib != jb)
        for (int64_t j = 0; j < nj; ++j) {
          const int64_t p = pb.partner(j0 + j) - i0;
          if (p >= 0 && p < ni) pos[j0 + j] = t[p * BS + j];
        }
      // the running sums hold the other candidates only (the positive is kept apart: no cancellation
      // in 1 - softmax(positive) when the softmax saturates on it); a positive's entry is the
      // positive of its row and of its column alike (partner is symmetric), so one mask serves both
      for (int64_t i = 0; i < ni; ++i) {
        const int64_t p = pb.partner(i0 + i) - j0;
        if (p >= 0 && p < nj) t[i * BS + p] = NEG_INF;
      }
      // rows of block I
      for (int64_t i = 0; i < ni; ++i) {
        const float* row = t + i * BS;
        vf mx = loadu(row);
        for (int64_t j = VW; j < BS; j += VW) {
          const vf v = loadu(row + j);
          mx = mx > v ? mx : v;
        }
        const float tile_max = hmax(mx);
        if (tile_max == NEG_INF) continue;
        const float old_max = run_max[i0 + i], new_max = std::max(old_max, tile_max);
        vf acc = vf{};
        for (int64_t j = 0; j < BS; j += VW) acc += vexp(loadu(row + j) - new_max);
        run_sum[i0 + i] = run_sum[i0 + i] * std::exp(old_max - new_max) + hsum(acc);
        run_max[i0 + i] = new_max;
      }
      // columns of block J (the transposed half of the pair)
      if (ib != jb) {
        for (int64_t j = 0; j < BS; j += VW) {
          vf cmax = splat(NEG_INF);
          for (int64_t i = 0; i < ni; ++i) {
            const vf v = loadu(t + i * BS + j);
            cmax = cmax > v ? cmax : v;
          }
          const vf old_max = loadu(run_max + j0 + j);
          vf new_max = old_max > cmax ? old_max : cmax;
          const vf safe_max = new_max == splat(NEG_INF) ? vf{} : new_max;
          vf acc = vf{};
          for (int64_t i = 0; i < ni; ++i) acc += vexp(loadu(t + i * BS + j) - safe_max);
          storeu(run_sum + j0 + j, loadu(run_sum + j0 + j) * vexp(old_max - safe_max) + acc);
          storeu(run_max + j0 + j, new_max);
        }
      }
    }
  }
  // merge the per-thread statistics of the other candidates (max m, sum s of exp(logit - m)), in
  // double: with z = log(s) + m - pos the log-odds of "not the positive", the row loss is
  // softplus(z) = log1p(s exp(m - pos)) (mstein_fast.numerics' form) and 1 - softmax(positive) is
  // sigmoid(z). Stored for the backward: lse[r] = top, lse[rows + r] = logsumexp - top (top =
  // max(m, pos)), lse[2 rows + r] = 1 - softmax(positive).
  for (int64_t r = 0; r < rows; ++r) {
    float m = NEG_INF;
    for (int tt = 0; tt < used_threads; ++tt) m = std::max(m, stats.get()[tt * 2 * rows_pad + r]);
    double s = 0.0;
    for (int tt = 0; tt < used_threads; ++tt) {
      const float tm = stats.get()[tt * 2 * rows_pad + r];
      if (tm != NEG_INF) s += static_cast<double>(stats.get()[tt * 2 * rows_pad + rows_pad + r]) * std::exp(tm - m);
    }
    const double p = pos[r];
    const double z = s > 0.0 ? std::log(s) + (static_cast<double>(m) - p) : -std::numeric_limits<double>::infinity();
    const double loss = z > 30.0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
    const double top = std::max(static_cast<double>(m), p);
    losses[r] = static_cast<float>(loss);
    lse[r] = static_cast<float>(top);
    lse[rows + r] = static_cast<float>((p + loss) - top);
    lse[2 * rows + r] = static_cast<float>(z > 0.0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)));
  }
}

// Q on block (ib, jb) from the W tile `t` (in place: t becomes Q), padding and diagonal zero.
// Adds row sums into rowsum[0..BS) and, if colsum is given, column sums into colsum[0..BS).
static void q_tile(const InfoNCEProblem& pb, const Similarity& sim, int64_t ib, int64_t jb, const float* g_pad,
                   const float* max_pad, const float* log_pad, const float* not_pos_pad, float* t, double* rowsum,
                   double* colsum) {
  const int64_t i0 = ib * BS, j0 = jb * BS, ni = pb.valid(ib), nj = pb.valid(jb);
  vf colacc[BS / VW];
  for (int64_t v = 0; v < BS / VW; ++v) colacc[v] = vf{};
  for (int64_t i = 0; i < BS; ++i) {
    float* row = t + i * BS;
    if (i >= ni) {
      std::fill(row, row + BS, 0.f);
      continue;
    }
    const int64_t r = i0 + i;
    const float g_r = g_pad[r], max_r = max_pad[r], log_r = log_pad[r];
    const int64_t p = pb.partner(r) - j0;
    const bool has_pos = p >= 0 && p < nj;
    const float w_pos = has_pos ? row[p] : 0.f;
    for (int64_t j = 0; j < BS; j += VW) {
      const vf w = loadu(row + j);
      const vf l = sim.logit(w);
      const vf e_r = vexp((l - max_r) - log_r);
      const vf e_c = vexp((l - loadu(max_pad + j0 + j)) - loadu(log_pad + j0 + j));
      storeu(row + j, sim.dlogit(w) * (g_r * e_r + loadu(g_pad + j0 + j) * e_c));
    }
    // the positive pair is the label of both its rows: d/dlogit there is softmax - 1 for each,
    // taken as -(1 - softmax) from the forward (no cancellation when the softmax saturates)
    if (has_pos) row[p] = -sim.dlogit1(w_pos) * (g_r * not_pos_pad[r] + g_pad[j0 + p] * not_pos_pad[j0 + p]);
    std::fill(row + nj, row + BS, 0.f);
    if (ib == jb) row[i] = 0.f;
    vf acc = vf{};
    for (int64_t j = 0; j < BS; j += VW) {
      const vf q = loadu(row + j);
      acc += q;
      colacc[j / VW] += q;
    }
    rowsum[i] += hsum(acc);
  }
  if (colsum)
    for (int64_t j = 0; j < BS; ++j) colsum[j] += colacc[j / VW][j % VW];
}

// Padded copies of the per-row inputs of the backward (zero beyond the real rows).
struct BackwardRows {
  std::vector<float> g, max, log, not_pos;
  BackwardRows(const InfoNCEProblem& pb, const float* grad_rows, const float* lse)
      : g(pb.rows_pad, 0.f), max(pb.rows_pad, 0.f), log(pb.rows_pad, 0.f), not_pos(pb.rows_pad, 0.f) {
    std::copy(grad_rows, grad_rows + pb.rows, g.begin());
    std::copy(lse, lse + pb.rows, max.begin());
    std::copy(lse + pb.rows, lse + 2 * pb.rows, log.begin());
    std::copy(lse + 2 * pb.rows, lse + 3 * pb.rows, not_pos.begin());
  }
};

// Where the gradient goes: d mean and d cov of each view (row r < n is view A's row r, else
// view B's row r - n); the covariances are needed for d cov = d sqrt(cov) / (2 sqrt(cov)).
struct GradientOut {
  const float* cov[2];
  float* g_mean[2];
  float* g_cov[2];
};

// Gradient rows [r0, r0 + nr): dx = 2 (rowsum * x - acc) (acc with leading dimension lda), mapped
// straight to mean and cov (as unstack_gradient does) while the rows are in cache.
static void finish_rows(const InfoNCEProblem& pb, int64_t r0, int64_t nr, const double* rowsum, const float* acc,
                        int64_t lda, const GradientOut& out) {
  const int64_t d = pb.k / 2;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, view = r < pb.n ? 0 : 1, vr = r - view * pb.n;
    const float rs = static_cast<float>(rowsum[i]);
    const float* xr = pb.x + r * pb.k;
    const float* a = acc + i * lda;
    const float* cov = out.cov[view] + vr * d;
    float* gm = out.g_mean[view] + vr * d;
    float* gc = out.g_cov[view] + vr * d;
    for (int64_t c = 0; c < d; ++c) gm[c] = 2.f * (rs * xr[c] - a[c]);
    for (int64_t c = 0; c < d; ++c) {
      const float g_std = 2.f * (rs * xr[d + c] - a[d + c]);
      gc[c] = cov[c] >= COV_FLOOR ? g_std * 0.5f / std::sqrt(cov[c]) : 0.f;
    }
  }
}

// Each thread owns row blocks: Q_I over all columns (stored or recomputed W), then one long
// product Q_I x. No shared writes, no per-thread gradient buffers.
static void infonce_backward_rows(const InfoNCEProblem& pb, const Similarity& sim, const BackwardRows& br,
                                  const float* w, const GradientOut& gout, int threads) {
  const int64_t rows_pad = pb.rows_pad, k_pad = pb.k_pad;
  Buffer xn(rows_pad * k_pad);
  pack_n(pb.x, pb.rows, pb.k, pb.k, xn.get(), rows_pad);
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    Buffer qpack(BS * rows_pad), tile(BS * BS), acc(BS * k_pad);
    std::vector<double> rowsum(BS);
#pragma omp for schedule(static)
    for (int64_t ib = 0; ib < pb.blocks; ++ib) {
      std::fill(rowsum.begin(), rowsum.end(), 0.0);
      if (stop_requested()) continue;  // Ctrl-C: the caller discards the outputs
      for (int64_t jb = 0; jb < pb.blocks; ++jb) {
        pb.w_tile(ib, jb, w, tile.get());
        q_tile(pb, sim, ib, jb, br.g.data(), br.max.data(), br.log.data(), br.not_pos.data(), tile.get(), rowsum.data(), nullptr);
        // scatter the tile into the broadcast panels of Q_I (columns jb * BS ...)
        for (int64_t ip = 0; ip < BS / MR; ++ip) {
          float* dst = qpack.get() + (ip * rows_pad + jb * BS) * MR;
          for (int64_t j = 0; j < BS; ++j)
            for (int r = 0; r < MR; ++r) dst[j * MR + r] = tile.get()[(ip * MR + r) * BS + j];
        }
      }
      product_n(qpack.get(), rows_pad, 0, xn.get(), rows_pad, 0, rows_pad, k_pad, acc.get(), k_pad, false);
      finish_rows(pb, ib * BS, pb.valid(ib), rowsum.data(), acc.get(), k_pad, gout);
    }
  }
}

// Block pairs I <= J once each (half the Gram work of the row-owner scheme); each thread adds
// into its own [rows_pad x k_pad] buffer, summed at the end. Used when W was not stored.
static void infonce_backward_pairs(const InfoNCEProblem& pb, const Similarity& sim, const BackwardRows& br,
                                   const GradientOut& gout, int threads) {
  const int64_t rows_pad = pb.rows_pad, k_pad = pb.k_pad;
  Buffer xn(rows_pad * k_pad);
  pack_n(pb.x, pb.rows, pb.k, pb.k, xn.get(), rows_pad);
  Buffer acc(static_cast<size_t>(threads) * rows_pad * k_pad, true);
  std::vector<double> rowsums(static_cast<size_t>(threads) * rows_pad, 0.0);
  int used_threads = 1;
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    const int tid = thread_id();
#ifdef _OPENMP
#pragma omp single
    used_threads = omp_get_num_threads();
#endif
    float* my_acc = acc.get() + static_cast<size_t>(tid) * rows_pad * k_pad;
    double* my_rowsum = rowsums.data() + static_cast<size_t>(tid) * rows_pad;
    Buffer tile(BS * BS), qa(BS * BS), qta(BS * BS);
#pragma omp for schedule(static)
    for (size_t pi = 0; pi < pb.pairs.size(); ++pi) {
      if (stop_requested()) continue;  // Ctrl-C: the caller discards the outputs
      const int64_t ib = pb.pairs[pi].first, jb = pb.pairs[pi].second;
      pb.w_tile(ib, jb, nullptr, tile.get());
      q_tile(pb, sim, ib, jb, br.g.data(), br.max.data(), br.log.data(), br.not_pos.data(), tile.get(), my_rowsum + ib * BS,
             ib != jb ? my_rowsum + jb * BS : nullptr);
      pack_a_rows(tile.get(), BS, BS, BS, qa.get(), BS);
      product_n(qa.get(), BS, 0, xn.get(), rows_pad, jb * BS, BS, k_pad, my_acc + ib * BS * k_pad, k_pad, true);
      if (ib != jb) {
        pack_a_cols(tile.get(), BS, BS, BS, qta.get(), BS);
        product_n(qta.get(), BS, 0, xn.get(), rows_pad, ib * BS, BS, k_pad, my_acc + jb * BS * k_pad, k_pad, true);
      }
    }
  }
  // reduce the thread buffers into thread 0's, then finish
  for (int tt = 1; tt < used_threads; ++tt) {
    const float* src = acc.get() + static_cast<size_t>(tt) * rows_pad * k_pad;
    float* dst = acc.get();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < rows_pad * k_pad; ++i) dst[i] += src[i];
    for (int64_t r = 0; r < rows_pad; ++r) rowsums[r] += rowsums[static_cast<size_t>(tt) * rows_pad + r];
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t ib = 0; ib < pb.blocks; ++ib)
    finish_rows(pb, ib * BS, pb.valid(ib), rowsums.data() + ib * BS, acc.get() + ib * BS * k_pad, k_pad, gout);
}

// Per-thread gradient buffers are used only while they stay below this size in total.
constexpr int64_t PAIR_BUFFER_LIMIT_BYTES = int64_t(512) << 20;

static void infonce_backward(const float* x, int64_t n, int64_t k, float temperature, int kind,
                             const float* grad_rows, const float* lse, const float* w, const float* cov_a,
                             const float* cov_b, float* g_mean_a, float* g_cov_a, float* g_mean_b, float* g_cov_b,
                             int threads) {
  const GradientOut gout{{cov_a, cov_b}, {g_mean_a, g_mean_b}, {g_cov_a, g_cov_b}};
  InfoNCEProblem pb(x, n, k, threads, w == nullptr);
  const Similarity sim{kind, 1.0f / temperature};
  const BackwardRows br(pb, grad_rows, lse);
  const int64_t pair_bytes = int64_t(threads) * pb.rows_pad * pb.k_pad * 4;
  if (w != nullptr || pair_bytes > PAIR_BUFFER_LIMIT_BYTES || pb.blocks == 1) {
    infonce_backward_rows(pb, sim, br, w, gout, threads);
  } else {
    infonce_backward_pairs(pb, sim, br, gout, threads);
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
