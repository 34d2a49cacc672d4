// pairwise_w2 on the CPU: out[b, i, j] = |x_bi - y_bj|^2 for x = [mean ; sqrt(cov)] rows
// (the Python side builds x and y and maps gradients back to mean and cov).
//
// Forward: a Gram tile x_I y_J^T per (batch, row block, column block) with the norm epilogue
// applied while the tile is in cache. Backward: gx = 2 (rowsum(g) x - g y) and
// gy = 2 (colsum(g) y - g^T x), each as one packed product per row block.
#pragma once
#include "gemm.h"

namespace mstein {
namespace MSTEIN_ISA {

static void sqdist_forward(const float* x, const float* y, float* out, int64_t batch, int64_t n, int64_t m,
                           int64_t k, int threads) {
  const int64_t n_pad = round_up(n, BS), m_pad = round_up(m, BS);
  const int64_t row_blocks = n_pad / BS, col_blocks = m_pad / BS;
  const int64_t tasks = batch * row_blocks;
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    Buffer apack(BS * k), bpack(m_pad * k), tile(BS * BS);
    std::vector<float> ny(m_pad, 0.f), nx(BS, 0.f);
    int64_t packed_batch = -1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / row_blocks, i0 = (t % row_blocks) * BS;
      const float* xb = x + b * n * k;
      const float* yb = y + b * m * k;
      if (b != packed_batch) {
        pack_b_rows(yb, m, k, k, bpack.get(), round_up(m, NR));
        for (int64_t j = 0; j < m; ++j) ny[j] = static_cast<float>(row_sq_norm(yb + j * k, k));
        packed_batch = b;
      }
      const int64_t rows = std::min<int64_t>(BS, n - i0);
      pack_a_rows(xb + i0 * k, rows, k, k, apack.get(), round_up(rows, MR));
      for (int64_t i = 0; i < rows; ++i) nx[i] = static_cast<float>(row_sq_norm(xb + (i0 + i) * k, k));
      float* ob = out + b * n * m;
      for (int64_t jb = 0; jb < col_blocks; ++jb) {
        const int64_t j0 = jb * BS, cols = std::min<int64_t>(BS, m - j0);
        gram_tile(apack.get(), 0, bpack.get(), j0, k, tile.get(), rows, cols);
        for (int64_t i = 0; i < rows; ++i) {
          const float* c = tile.get() + i * BS;
          float* o = ob + (i0 + i) * m + j0;
          for (int64_t j = 0; j < cols; ++j) o[j] = nx[i] + ny[j0 + j] - 2.f * c[j];
        }
      }
    }
  }
}

// One side of the backward: out[r] = 2 (sum_q g(r, q) * a[r] - sum_q g(r, q) b[q]) for the rows r
// of `a` ([rows, k]); g(r, q) = g[r * ldg + q] (or g[q * ldg + r] when transposed), b [inner, k].
static void sqdist_backward_side(const float* g, int64_t ldg, bool transposed, const float* a, const float* b,
                                 float* out, int64_t batch, int64_t rows, int64_t inner, int64_t k,
                                 int64_t g_batch_stride, int threads) {
  const int64_t rows_pad = round_up(rows, BS), inner_pad = round_up(inner, BS), k_pad = round_up(k, NR);
  const int64_t blocks = rows_pad / BS, tasks = batch * blocks;
#pragma omp parallel num_threads(threads)
  {
    DenormalsOff ftz;
    Buffer gpack(BS * inner), npack(inner_pad * k_pad), cbuf(BS * k_pad);
    std::vector<double> rowsum(BS);
    int64_t packed_batch = -1;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t bi = t / blocks, r0 = (t % blocks) * BS;
      const float* gb = g + bi * g_batch_stride;
      if (bi != packed_batch) {
        pack_n(b + bi * inner * k, inner, k, k, npack.get(), inner);
        packed_batch = bi;
      }
      const int64_t nrows = std::min<int64_t>(BS, rows - r0);
      if (transposed) {
        pack_a_cols(gb + r0, nrows, inner, ldg, gpack.get(), round_up(nrows, MR));
      } else {
        pack_a_rows(gb + r0 * ldg, nrows, inner, ldg, gpack.get(), round_up(nrows, MR));
      }
      for (int64_t i = 0; i < nrows; ++i) {
        double s = 0.0;
        if (transposed) {
          for (int64_t q = 0; q < inner; ++q) s += gb[q * ldg + r0 + i];
        } else {
          for (int64_t q = 0; q < inner; ++q) s += gb[(r0 + i) * ldg + q];
        }
        rowsum[i] = s;
      }
      product_n(gpack.get(), inner, 0, npack.get(), inner, 0, inner, k_pad, cbuf.get(), k_pad, false, nrows);
      const float* ab = a + bi * rows * k;
      float* ob = out + bi * rows * k;
      for (int64_t i = 0; i < nrows; ++i) {
        const float rs = static_cast<float>(rowsum[i]);
        const float* c = cbuf.get() + i * k_pad;
        const float* ar = ab + (r0 + i) * k;
        float* o = ob + (r0 + i) * k;
        for (int64_t j = 0; j < k; ++j) o[j] = 2.f * (rs * ar[j] - c[j]);
      }
    }
  }
}

static void sqdist_backward(const float* g, const float* x, const float* y, float* gx, float* gy, int64_t batch,
                            int64_t n, int64_t m, int64_t k, int threads) {
  sqdist_backward_side(g, m, false, x, y, gx, batch, n, m, k, n * m, threads);
  sqdist_backward_side(g, m, true, y, x, gy, batch, m, n, k, n * m, threads);
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
