// Dense layer products y = x W^T + b and their gradients, on the register-blocked micro-kernel of
// gemm.h.
//
// The encoder's dense layers multiply tall, thin matrices ([tokens, 64] by [64, 256] and back). On
// CPUs where the BLAS library runs these at a fraction of the vector units' peak (MKL's AVX2 code
// on AMD Zen, for instance: benchmarks/RESULTS.md), the same micro-kernel as the fused InfoNCE's
// does them faster. Three products, float32, row-major contiguous buffers:
//   forward          y  [t, n] = x [t, k] W^T + b   (W [n, k], b [n] or null)
//   input gradient   gx [t, k] = g [t, n] W
//   weight gradient  gW [n, k] = g^T x              (the bias gradient, g's column sums, is left to the caller)
// Rows are split across threads in blocks (forward, input gradient); the weight gradient splits the
// token dimension into one contiguous range per thread and adds the partial products in thread
// order, so the result depends on the thread count but not on scheduling (deterministic).
#pragma once
#include "gemm.h"

namespace mstein {
namespace MSTEIN_ISA {

constexpr int64_t LIN_KC = 256;  // depth of one pass (packed panels stay in L2)

// bpack: the [depth x n] right operand in panels of NR columns, depth-major within a panel:
// element (p, col) at ((col / NR) * depth + p) * NR + col % NR, zero-padded to round_up(n, NR).
// C[m x n] (ldc) = A[m x depth] * B (+ bias), A row-major (lda), read in place by the micro-kernel
// (MR rows at a time); only a last group of fewer than MR rows is copied, zero-padded, into a small
// buffer. Threads take BS-row blocks.
static void gemm_rows_panels(const float* a, int64_t lda, const float* bpack, int64_t m, int64_t n, int64_t depth,
                             const float* bias, float* c, int64_t ldc, int threads) {
  const int64_t n_pad = round_up(n, NR);
  const int64_t blocks = (m + BS - 1) / BS;
#pragma omp parallel num_threads(threads)
  {
    Buffer tail(static_cast<size_t>(MR) * std::max<int64_t>(depth, 1));
    Buffer tile(static_cast<size_t>(BS) * n_pad);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * BS, rows = std::min<int64_t>(BS, m - r0);
      const int64_t groups = (rows + MR - 1) / MR, full = rows / MR;
      if (full < groups) {  // the matrix's last rows: a partial group
        std::memset(tail.get(), 0, sizeof(float) * MR * depth);
        for (int64_t r = full * MR; r < rows; ++r)
          std::memcpy(tail.get() + (r - full * MR) * depth, a + (r0 + r) * lda, sizeof(float) * depth);
      }
      if (depth == 0) std::memset(tile.get(), 0, sizeof(float) * BS * n_pad);
      for (int64_t k0 = 0; k0 < depth; k0 += LIN_KC) {
        const int64_t kc = std::min<int64_t>(LIN_KC, depth - k0);
        for (int64_t j = 0; j < n_pad / NR; ++j) {
          const float* b = bpack + (j * depth + k0) * NR;
          for (int64_t ip = 0; ip < groups; ++ip) {
            float* ct = tile.get() + ip * MR * n_pad + j * NR;
            if (ip < full)
              micro_kernel_rows(kc, a + (r0 + ip * MR) * lda + k0, lda, b, ct, n_pad, k0 > 0);
            else
              micro_kernel_rows(kc, tail.get() + k0, depth, b, ct, n_pad, k0 > 0);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float* src = tile.get() + r * n_pad;
        float* dst = c + (r0 + r) * ldc;
        if (bias) {
          for (int64_t col = 0; col < n; ++col) dst[col] = src[col] + bias[col];
        } else {
          std::memcpy(dst, src, sizeof(float) * n);
        }
      }
    }
  }
}

// y [t, n] = x [t, k] W^T (+ b); W [n, k].
static void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t t, int64_t k, int64_t n,
                           int threads) {
  Buffer bpack(static_cast<size_t>(round_up(n, NR)) * std::max<int64_t>(k, 1));
  pack_b_rows(w, n, k, k, bpack.get(), round_up(n, NR));  // panel element (p, col) = W[col, p]
  gemm_rows_panels(x, k, bpack.get(), t, n, k, b, y, n, threads);
}

// gx [t, k] = g [t, n] W; W [n, k].
static void linear_backward_input(const float* g, const float* w, float* gx, int64_t t, int64_t k, int64_t n,
                                  int threads) {
  Buffer bpack(static_cast<size_t>(round_up(k, NR)) * std::max<int64_t>(n, 1));
  pack_n(w, n, k, k, bpack.get(), n);  // panel element (p, col) = W[p, col], depth n
  gemm_rows_panels(g, n, bpack.get(), t, k, n, nullptr, gx, k, threads);
}

// gW [n, k] = g [t, n]^T x [t, k].
static void linear_backward_weight(const float* g, const float* x, float* gw, int64_t t, int64_t k, int64_t n,
                                   int threads) {
  const int64_t n_pad = round_up(n, MR), k_pad = round_up(k, NR);
  // whole micro-tiles in both directions: the operands are read in place (no copies)
  const bool in_place = n % MR == 0 && k % NR == 0;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, (t + LIN_KC - 1) / LIN_KC)));
  std::vector<Buffer> partial(threads);
  for (auto& acc : partial) acc.reset(static_cast<size_t>(n_pad) * k_pad, true);
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int count = omp_get_num_threads();
#else
    const int count = 1;
#endif
    const int id = thread_id();
    // a contiguous range of tokens per thread, in whole passes
    const int64_t passes = (t + LIN_KC - 1) / LIN_KC;
    const int64_t p0 = passes * id / count, p1 = passes * (id + 1) / count;
    Buffer& acc = partial[id];
    Buffer apack(static_cast<size_t>(n_pad) * LIN_KC), bpack(static_cast<size_t>(k_pad) * LIN_KC);
    bool first = true;
    for (int64_t pass = p0; pass < p1; ++pass) {
      const int64_t t0 = pass * LIN_KC, kc = std::min<int64_t>(LIN_KC, t - t0);
      if (in_place) {  // A (row i, depth p) = g[t0 + p, i], B (depth p, col) = x[t0 + p, col], read where they are
        for (int64_t ip = 0; ip < n_pad / MR; ++ip)  // the A group (strided) stays in L1 across the B panels
          for (int64_t j = 0; j < k_pad / NR; ++j)
            micro_kernel_tn(kc, g + t0 * n + ip * MR, n, x + t0 * k + j * NR, k, acc.get() + ip * MR * k_pad + j * NR,
                            k_pad, !first);
      } else {
        pack_a_cols(g + t0 * n, n, kc, n, apack.get(), n_pad);  // A (row i, depth p) = g[t0 + p, i]
        pack_n(x + t0 * k, kc, k, k, bpack.get(), kc);          // B (depth p, col) = x[t0 + p, col]
        for (int64_t j = 0; j < k_pad / NR; ++j)
          for (int64_t ip = 0; ip < n_pad / MR; ++ip)
            micro_kernel(kc, apack.get() + ip * kc * MR, bpack.get() + j * kc * NR,
                         acc.get() + ip * MR * k_pad + j * NR, k_pad, !first);
      }
      first = false;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    float* dst = gw + i * k;
    for (int64_t col = 0; col < k; ++col) {
      float s = 0.f;
      for (int id = 0; id < threads; ++id) s += partial[id].get()[i * k_pad + col];
      dst[col] = s;
    }
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
