// The rectangular InfoNCE primitive: `r` local rows against one contiguous range of `c` columns of
// the global stacked Gaussians x = [mean ; sqrt(cov)] (so W = |row - col|^2), as the distributed
// loss needs it (mstein_fast/ops/_wasserstein_infonce/distributed.py): each rank contrasts its rows with all 2N global
// columns, one bounded column range per call, and keeps only O(r) statistics between calls.
//
// Per row i the caller names, relative to the range, the row's own column self_col[i] (masked)
// and its positive's column pos_col[i], each -1 when it lies outside the range. Over the columns
// of all ranges the row's loss is, with logit = s(W) / T,
//   loss_i = log(1 + sum_{c != self, pos} exp(logit_ic - logit_i,pos)),
// which the forward builds from a running state the caller keeps in float64:
//   run_max[i]    the largest logit among the "other" candidates (neither self nor positive),
//   run_others[i] sum over the other candidates of exp(logit - run_max), and
//   pos[i]        the positive's logit (written by the call whose range holds it).
// With m, s, p these, loss = log1p(s exp(m - p)) (mstein_fast.numerics.infonce_row_loss): the
// positive stays out of the sums, so nothing cancels when the softmax saturates on it.
//
// Backward: with top = max(m, p), log_sum = log(s exp(m - top) + exp(p - top)) and
// not_pos = 1 - softmax(positive) (all from the final state), dloss_i/dW_ic is
//   P_ic = g_i s'(W_ic) / T * softmax_ic,   softmax_ic = exp((logit_ic - top_i) - log_sum_i),
// except P = -g_i s'(W) / T * not_pos_i at the positive and 0 at the row itself. Then
//   d row_i = 2 (sum_c P_ic row_i - sum_c P_ic col_c),  d col_c = 2 (sum_i P_ic col_c - sum_i P_ic row_i).
//
// Both passes work on Gram tiles x_I y_J^T of BS x BS (gemm.h) with the norm epilogue, so W is
// recomputed exactly as the forward computed it (the same code on the same packed operands: the
// logits of the backward are bitwise those of the forward, which matters at T = 1e-6 where an ulp
// of a logit is 0.06). No r x c matrix is formed. Static schedules throughout: results are bitwise
// reproducible for a given thread count (the forward's split of the work depends on the sizes
// only, so its state does not even depend on the thread count).
#pragma once
#include "wasserstein_infonce.h"

namespace mstein {
namespace MSTEIN_ISA {

// Packed operands of the Gram tiles rows x cols^T and the squared norms for the W epilogue.
struct RectProblem {
  const float* rows;
  const float* cols;
  int64_t r, c, k, r_pad, c_pad, row_blocks, col_blocks;
  Buffer ra, cb;                     // rows in broadcast panels, cols in vector panels
  std::vector<float> rnorm, cnorm;   // |row|^2, |col|^2 (zero for padding)

  RectProblem(const float* rows_, const float* cols_, int64_t r_, int64_t c_, int64_t k_, int threads)
      : rows(rows_), cols(cols_), r(r_), c(c_), k(k_), r_pad(round_up(r_, BS)), c_pad(round_up(c_, BS)),
        row_blocks(r_pad / BS), col_blocks(c_pad / BS), ra(r_pad * k_), cb(c_pad * k_), rnorm(r_pad, 0.f),
        cnorm(c_pad, 0.f) {
    const int64_t blocks = row_blocks + col_blocks;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const bool is_row = b < row_blocks;
      const int64_t b0 = (is_row ? b : b - row_blocks) * BS;
      const int64_t n = std::min<int64_t>(BS, (is_row ? r : c) - b0);
      const float* src = (is_row ? rows : cols) + b0 * k;
      if (is_row) {
        pack_a_rows(src, n, k, k, ra.get() + b0 * k, BS);
      } else {
        pack_b_rows(src, n, k, k, cb.get() + b0 * k, BS);
      }
      float* norms = (is_row ? rnorm.data() : cnorm.data()) + b0;
      for (int64_t i = 0; i < n; ++i) norms[i] = static_cast<float>(row_sq_norm(src + i * k, k));
    }
  }
  int64_t valid_rows(int64_t ib) const { return std::min<int64_t>(BS, r - ib * BS); }
  int64_t valid_cols(int64_t jb) const { return std::min<int64_t>(BS, c - jb * BS); }

  // W on rows block ib x cols block jb into tile[BS x BS] (padding entries are finite, unused).
  void w_tile(int64_t ib, int64_t jb, float* tile) const {
    const int64_t i0 = ib * BS, j0 = jb * BS;
    if (k == 0) {
      std::fill(tile, tile + BS * BS, 0.f);
    } else {
      gram_tile(ra.get(), i0, cb.get(), j0, k, tile);
    }
    for (int64_t i = 0; i < BS; ++i) {
      float* t = tile + i * BS;
      const vf ni = splat(rnorm[i0 + i]);
      for (int64_t j = 0; j < BS; j += VW) storeu(t + j, ni + loadu(cnorm.data() + j0 + j) - 2.0f * loadu(t + j));
    }
  }
};

// Column splits of the forward: enough (row block, column split) tasks to feed the threads when
// the rows are few, chosen from the sizes alone so that the sums do not depend on the thread count.
constexpr int64_t RECT_TARGET_TASKS = 64;

static void infonce_rect_forward(const float* rows, const float* cols, int64_t r, int64_t c, int64_t k,
                                 const int64_t* self_col, const int64_t* pos_col, float temperature, int kind,
                                 double* run_max, double* run_others, double* pos, int threads) {
  if (r == 0 || c == 0) return;
  const RectProblem pb(rows, cols, r, c, k, threads);
  const Similarity sim{kind, 1.0f / temperature};
  const int64_t wanted = std::min<int64_t>(pb.col_blocks, (RECT_TARGET_TASKS + pb.row_blocks - 1) / pb.row_blocks);
  const int64_t per_split = (pb.col_blocks + wanted - 1) / wanted;  // column blocks per split
  const int64_t splits = (pb.col_blocks + per_split - 1) / per_split;
  // per (split, row): max and sum of exp(logit - max) over the split's other candidates (float,
  // as the single-process kernel's per-thread sums), merged into the float64 state below
  std::vector<float> part_max(splits * pb.r_pad, NEG_INF), part_sum(splits * pb.r_pad, 0.f);
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    Buffer tile(BS * BS);
    float* t = tile.get();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < pb.row_blocks * splits; ++task) {
      if (stop_requested()) continue;  // Ctrl-C: the caller discards the outputs
      const int64_t ib = task / splits, s = task % splits;
      const int64_t i0 = ib * BS, ni = pb.valid_rows(ib);
      float* pm = part_max.data() + s * pb.r_pad + i0;
      float* ps = part_sum.data() + s * pb.r_pad + i0;
      const int64_t jb_end = std::min(pb.col_blocks, (s + 1) * per_split);
      for (int64_t jb = s * per_split; jb < jb_end; ++jb) {
        const int64_t j0 = jb * BS, nj = pb.valid_cols(jb);
        pb.w_tile(ib, jb, t);
        for (int64_t i = 0; i < ni; ++i) {
          float* row = t + i * BS;
          for (int64_t j = 0; j < BS; j += VW) storeu(row + j, sim.logit(loadu(row + j)));
          std::fill(row + nj, row + BS, NEG_INF);
          const int64_t sc = self_col[i0 + i] - j0, pc = pos_col[i0 + i] - j0;
          if (sc >= 0 && sc < nj) row[sc] = NEG_INF;
          if (pc >= 0 && pc < nj) {  // one task holds the positive's column: a single writer
            pos[i0 + i] = row[pc];
            row[pc] = NEG_INF;
          }
          vf mx = loadu(row);
          for (int64_t j = VW; j < BS; j += VW) {
            const vf v = loadu(row + j);
            mx = mx > v ? mx : v;
          }
          const float tile_max = hmax(mx);
          if (tile_max == NEG_INF) continue;  // no other candidate in this tile
          const float new_max = std::max(pm[i], tile_max);
          vf acc = vf{};
          for (int64_t j = 0; j < BS; j += VW) acc += vexp(loadu(row + j) - new_max);
          ps[i] = ps[i] * std::exp(pm[i] - new_max) + hsum(acc);
          pm[i] = new_max;
        }
      }
    }
  }
  // merge the splits into the running state in a fixed order, in double
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < r; ++i) {
    double m = run_max[i], s = run_others[i];
    for (int64_t sp = 0; sp < splits; ++sp) {
      const double pm = part_max[sp * pb.r_pad + i];
      if (pm == -std::numeric_limits<double>::infinity()) continue;
      const double nm = std::max(m, pm);
      s = s * std::exp(m - nm) + static_cast<double>(part_sum[sp * pb.r_pad + i]) * std::exp(pm - nm);
      m = nm;
    }
    run_max[i] = m;
    run_others[i] = s;
  }
}

// Per-row inputs of the backward, zero-padded to whole blocks.
struct RectRows {
  std::vector<float> g, top, log_sum, not_pos;
  RectRows(int64_t r, int64_t r_pad, const float* g_, const float* stats)
      : g(r_pad, 0.f), top(r_pad, 0.f), log_sum(r_pad, 0.f), not_pos(r_pad, 0.f) {
    std::copy(g_, g_ + r, g.begin());
    std::copy(stats, stats + r, top.begin());
    std::copy(stats + r, stats + 2 * r, log_sum.begin());
    std::copy(stats + 2 * r, stats + 3 * r, not_pos.begin());
  }
};

// P on block (ib, jb) from the W tile `t` (in place: t becomes P; padding, self zero). Adds the row
// sums into rowsum[0..BS) and the column sums into colsum[0..BS).
static void rect_p_tile(const RectProblem& pb, const Similarity& sim, int64_t ib, int64_t jb, const int64_t* self_col,
                        const int64_t* pos_col, const RectRows& rr, float* t, double* rowsum, double* colsum) {
  const int64_t i0 = ib * BS, j0 = jb * BS, ni = pb.valid_rows(ib), nj = pb.valid_cols(jb);
  vf colacc[BS / VW];
  for (int64_t v = 0; v < BS / VW; ++v) colacc[v] = vf{};
  for (int64_t i = 0; i < ni; ++i) {
    float* row = t + i * BS;
    const int64_t ri = i0 + i;
    const float g_r = rr.g[ri], top_r = rr.top[ri], log_r = rr.log_sum[ri];
    const int64_t sc = self_col[ri] - j0, pc = pos_col[ri] - j0;
    const bool has_pos = pc >= 0 && pc < nj;
    const float w_pos = has_pos ? row[pc] : 0.f;
    for (int64_t j = 0; j < BS; j += VW) {
      const vf w = loadu(row + j);
      const vf e = vexp((sim.logit(w) - top_r) - log_r);
      storeu(row + j, sim.dlogit(w) * (g_r * e));
    }
    // at the label d loss / d logit = softmax - 1, taken as -(1 - softmax) from the forward's state
    if (has_pos) row[pc] = -sim.dlogit1(w_pos) * (g_r * rr.not_pos[ri]);
    if (sc >= 0 && sc < nj) row[sc] = 0.f;
    std::fill(row + nj, row + BS, 0.f);
    vf acc = vf{};
    for (int64_t j = 0; j < BS; j += VW) {
      const vf q = loadu(row + j);
      acc += q;
      colacc[j / VW] += q;
    }
    rowsum[i] += hsum(acc);
  }
  std::fill(t + ni * BS, t + BS * BS, 0.f);
  for (int64_t j = 0; j < BS; ++j) colsum[j] += colacc[j / VW][j % VW];
}

// g_rows += d/d rows and g_cols = d/d cols of sum_i g[i] * loss_i restricted to this column range.
// The row blocks are visited in turn; for each, the threads share its column blocks (static), each
// adding P_IJ cols_J into its own [BS x K] accumulator (summed in thread order afterwards) and
// P_IJ^T rows_I into the accumulator of column block J, which only the thread holding J touches.
static void infonce_rect_backward(const float* rows, const float* cols, int64_t r, int64_t c, int64_t k,
                                  const int64_t* self_col, const int64_t* pos_col, float temperature, int kind,
                                  const float* g, const float* stats, float* g_rows, float* g_cols, int threads) {
  if (c == 0) return;
  if (r == 0) {
    std::fill(g_cols, g_cols + c * k, 0.f);
    return;
  }
  const RectProblem pb(rows, cols, r, c, k, threads);
  const Similarity sim{kind, 1.0f / temperature};
  const RectRows rr(r, pb.r_pad, g, stats);
  const int64_t k_pad = round_up(k, NR);
  Buffer rn(pb.r_pad * k_pad), cn(pb.c_pad * k_pad);
  pack_n(rows, r, k, k, rn.get(), pb.r_pad);
  pack_n(cols, c, k, k, cn.get(), pb.c_pad);
  Buffer col_acc(pb.c_pad * k_pad, true);
  std::vector<double> colsum(pb.c_pad, 0.0);
  Buffer row_acc(static_cast<size_t>(threads) * BS * k_pad);
  std::vector<double> rowsums(static_cast<size_t>(threads) * BS);
  int team = 1;
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    const int tid = thread_id();
#ifdef _OPENMP
#pragma omp single
    team = omp_get_num_threads();
#endif
    Buffer tile(BS * BS), qa(BS * BS), qt(BS * BS);
    float* my_acc = row_acc.get() + static_cast<size_t>(tid) * BS * k_pad;
    double* my_rowsum = rowsums.data() + static_cast<size_t>(tid) * BS;
    for (int64_t ib = 0; ib < pb.row_blocks; ++ib) {
      const int64_t i0 = ib * BS, ni = pb.valid_rows(ib);
      std::fill(my_acc, my_acc + BS * k_pad, 0.f);
      std::fill(my_rowsum, my_rowsum + BS, 0.0);
#pragma omp for schedule(static)
      for (int64_t jb = 0; jb < pb.col_blocks; ++jb) {
        if (stop_requested()) continue;  // Ctrl-C: the caller discards the outputs
        const int64_t j0 = jb * BS;
        pb.w_tile(ib, jb, tile.get());
        rect_p_tile(pb, sim, ib, jb, self_col, pos_col, rr, tile.get(), my_rowsum, colsum.data() + j0);
        pack_a_rows(tile.get(), BS, BS, BS, qa.get(), BS);
        product_n(qa.get(), BS, 0, cn.get(), pb.c_pad, j0, BS, k_pad, my_acc, k_pad, true);
        pack_a_cols(tile.get(), BS, BS, BS, qt.get(), BS);
        product_n(qt.get(), BS, 0, rn.get(), pb.r_pad, i0, BS, k_pad, col_acc.get() + j0 * k_pad, k_pad, true);
      }
      // (implicit barrier) the rows of block I: the threads' accumulators summed in thread order
#pragma omp for schedule(static)
      for (int64_t i = 0; i < ni; ++i) {
        double rs = 0.0;
        for (int tt = 0; tt < team; ++tt) rs += rowsums[static_cast<size_t>(tt) * BS + i];
        const float rsf = static_cast<float>(rs);
        const float* x = rows + (i0 + i) * k;
        float* out = g_rows + (i0 + i) * k;
        for (int64_t q = 0; q < k; ++q) {
          float a = 0.f;
          for (int tt = 0; tt < team; ++tt) a += row_acc.get()[(static_cast<size_t>(tt) * BS + i) * k_pad + q];
          out[q] += 2.f * (rsf * x[q] - a);
        }
      }
      // (implicit barrier) before the accumulators are reset for the next row block
    }
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t j = 0; j < c; ++j) {
    const float cs = static_cast<float>(colsum[j]);
    const float* y = cols + j * k;
    const float* a = col_acc.get() + j * k_pad;
    float* out = g_cols + j * k;
    for (int64_t q = 0; q < k; ++q) out[q] = 2.f * (cs * y[q] - a[q]);
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
