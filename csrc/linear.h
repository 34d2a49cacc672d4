// Dense layers y = act(x W^T + b) and their gradients, on the register-blocked micro-kernel of
// gemm.h, with the activation (none, ELU, or the covariance activation ELU + 1) fused in.
//
// The encoder's dense layers multiply tall, thin matrices ([tokens, 64] by [64, 256] and back). On
// CPUs where the BLAS library runs these at a fraction of the vector units' peak (MKL's AVX2 code
// on AMD Zen, for instance: benchmarks/RESULTS.md), the same micro-kernel as the fused InfoNCE's
// does them faster. Inside a training step the activations are far larger than the caches, so
// what costs is moving them through memory: the activation is applied to each block of outputs
// while it is in cache, and the backward makes one sweep over the upstream gradient for all three
// gradients. Float32, row-major contiguous buffers:
//   forward   y  [t, n] = act(x [t, k] W^T + b)          (W [n, k], b [n] or null)
//   backward  g' = g * act'(y)  (act' from the output y: activations.h)
//             gx [t, k] = g' W,  gW [n, k] = g'^T x,  gb [n] = sum over tokens of g'  (each optional)
// The forward splits rows across threads in blocks. The backward gives each thread one contiguous
// range of tokens (whole passes of LIN_KC) and adds the per-thread partial gW and gb in thread
// order: the result depends on the thread count but not on scheduling (deterministic). Every
// element is computed in the same order whatever the blocking, so gx and gW equal those of
// separate products; act(z) equals elu_forward's (the same lane function).
#pragma once
#include "activations.h"
#include "gemm.h"

namespace mstein {
namespace MSTEIN_ISA {

constexpr int64_t LIN_KC = 256;  // depth of one pass (packed panels stay in L2)

// act: 0 none, 1 ELU, 2 ELU + 1 floored at 1e-24 (elu_lane's plus_one = act - 1)
static inline vf activate(vf v, int act) { return act == 0 ? v : elu_lane(v, act - 1); }

// C rows [0, rows) (ldc) = act(A [rows x depth] * B + bias) for rows <= BS: A row-major (lda), read
// in place by the micro-kernel MR rows at a time (a last group of fewer than MR rows is copied,
// zero-padded, into `tail` [MR x depth]); B in panels of NR columns, depth-major within a panel:
// element (p, col) at ((col / NR) * depth + p) * NR + col % NR, zero-padded to round_up(n, NR).
// `tile` [BS x round_up(n, NR)] is scratch.
static void rows_block(const float* a, int64_t lda, int64_t rows, const float* bpack, int64_t n, int64_t depth,
                       const float* bias, int act, float* c, int64_t ldc, float* tail, float* tile) {
  const int64_t n_pad = round_up(n, NR);
  const int64_t groups = (rows + MR - 1) / MR, full = rows / MR;
  if (full < groups) {
    std::memset(tail, 0, sizeof(float) * MR * depth);
    for (int64_t r = full * MR; r < rows; ++r)
      std::memcpy(tail + (r - full * MR) * depth, a + r * lda, sizeof(float) * depth);
  }
  if (depth == 0) std::memset(tile, 0, sizeof(float) * BS * n_pad);
  for (int64_t k0 = 0; k0 < depth; k0 += LIN_KC) {
    const int64_t kc = std::min<int64_t>(LIN_KC, depth - k0);
    for (int64_t j = 0; j < n_pad / NR; ++j) {
      const float* b = bpack + (j * depth + k0) * NR;
      for (int64_t ip = 0; ip < groups; ++ip) {
        float* ct = tile + ip * MR * n_pad + j * NR;
        if (ip < full)
          micro_kernel_rows(kc, a + ip * MR * lda + k0, lda, b, ct, n_pad, k0 > 0);
        else
          micro_kernel_rows(kc, tail + k0, depth, b, ct, n_pad, k0 > 0);
      }
    }
  }
  // epilogue while the block is in cache: bias, activation, store
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = tile + r * n_pad;
    float* dst = c + r * ldc;
    int64_t col = 0;
    for (; col + VW <= n; col += VW) {
      vf v = loadu(src + col);
      if (bias) v += loadu(bias + col);
      storeu(dst + col, act ? activate(v, act) : v);
    }
    if (col < n) {  // the last columns through a padded vector (the tile row has n_pad >= col + VW columns)
      const int64_t width = n - col;
      vf v = loadu(src + col);
      if (bias) {
        float bb[VW] = {};
        std::memcpy(bb, bias + col, sizeof(float) * width);
        v += loadu(bb);
      }
      float out[VW];
      storeu(out, act ? activate(v, act) : v);
      std::memcpy(dst + col, out, sizeof(float) * width);
    }
  }
}

// out[i] = g[i] * act'(at y[i]) for i < count (act 1 ELU, 2 ELU + 1; out may alias g).
static void act_grad(const float* g, const float* y, int64_t count, int act, float* out) {
  int64_t i = 0;
  for (; i + VW <= count; i += VW) storeu(out + i, elu_grad_lane(loadu(g + i), loadu(y + i), act - 1));
  if (i < count) {
    float gb[VW] = {}, yb[VW] = {};
    std::memcpy(gb, g + i, (count - i) * sizeof(float));
    std::memcpy(yb, y + i, (count - i) * sizeof(float));
    storeu(gb, elu_grad_lane(loadu(gb), loadu(yb), act - 1));
    std::memcpy(out + i, gb, (count - i) * sizeof(float));
  }
}

// acc [round_up(n, MR) x round_up(k, NR)] (+)= g'^T x over one pass of kc tokens: g' [kc, n] and
// x [kc, k] row-major. Read in place when both are whole micro-tiles wide, else through the packed
// panels apack [round_up(n, MR) x kc] and bpack [round_up(k, NR) x kc].
static void weight_grad_pass(const float* gp, int64_t n, const float* xp, int64_t k, int64_t kc, float* acc,
                             bool accumulate, float* apack, float* bpack) {
  const int64_t n_pad = round_up(n, MR), k_pad = round_up(k, NR);
  if (n % MR == 0 && k % NR == 0) {  // A (row i, depth p) = g'[p, i], B (depth p, col) = x[p, col], where they are
    for (int64_t ip = 0; ip < n_pad / MR; ++ip)  // the A group (strided) stays in L1 across the B panels
      for (int64_t j = 0; j < k_pad / NR; ++j)
        micro_kernel_tn(kc, gp + ip * MR, n, xp + j * NR, k, acc + ip * MR * k_pad + j * NR, k_pad, accumulate);
  } else {
    pack_a_cols(gp, n, kc, n, apack, n_pad);  // A (row i, depth p) = g'[p, i]
    pack_n(xp, kc, k, k, bpack, kc);          // B (depth p, col) = x[p, col]
    for (int64_t j = 0; j < k_pad / NR; ++j)
      for (int64_t ip = 0; ip < n_pad / MR; ++ip)
        micro_kernel(kc, apack + ip * kc * MR, bpack + j * kc * NR, acc + ip * MR * k_pad + j * NR, k_pad, accumulate);
  }
}

// sums[col] += the column sums of g' [kc, n] (float within the pass, added in double).
static void colsum_pass(const float* gp, int64_t kc, int64_t n, float* colsum, double* sums) {
  std::fill(colsum, colsum + n, 0.f);
  for (int64_t r = 0; r < kc; ++r)
    for (int64_t col = 0; col < n; ++col) colsum[col] += gp[r * n + col];
  for (int64_t col = 0; col < n; ++col) sums[col] += colsum[col];
}

// dst [n, k] = the per-thread partial accumulators [round_up(n, MR) x round_up(k, NR)] added in thread order.
static void sum_partials(const std::vector<Buffer>& partial, int64_t n, int64_t k, float* dst) {
  const int64_t k_pad = round_up(k, NR);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t col = 0; col < k; ++col) {
      float s = 0.f;
      for (const Buffer& b : partial) s += b.get()[i * k_pad + col];
      dst[i * k + col] = s;
    }
}

// dst [n] = the per-thread double sums [threads x n] added in thread order.
static void sum_bias(const std::vector<double>& sums, int threads, int64_t n, float* dst) {
  for (int64_t col = 0; col < n; ++col) {
    double s = 0.0;
    for (int id = 0; id < threads; ++id) s += sums[static_cast<size_t>(id) * n + col];
    dst[col] = static_cast<float>(s);
  }
}

// y [t, n] = act(x [t, k] W^T + b); W [n, k].
static void linear_forward(const float* x, const float* w, const float* b, float* y, int64_t t, int64_t k, int64_t n,
                           int act, int threads) {
  const int64_t n_pad = round_up(n, NR);
  Buffer bpack(static_cast<size_t>(n_pad) * std::max<int64_t>(k, 1));
  pack_b_rows(w, n, k, k, bpack.get(), n_pad);  // panel element (p, col) = W[col, p]
  const int64_t blocks = (t + BS - 1) / BS;
#pragma omp parallel num_threads(threads)
  {
    Buffer tail(static_cast<size_t>(MR) * std::max<int64_t>(k, 1));
    Buffer tile(static_cast<size_t>(BS) * n_pad);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * BS, rows = std::min<int64_t>(BS, t - r0);
      rows_block(x + r0 * k, k, rows, bpack.get(), n, k, b, act, y + r0 * n, n, tail.get(), tile.get());
    }
  }
}

// From g [t, n] = dL/dy (and, with act, the forward's output y [t, n]): gx [t, k], gW [n, k] and
// gb [n] (each may be null: not computed) of y = act(x W^T + b); x [t, k], W [n, k].
static void linear_backward(const float* g, const float* y, int act, const float* x, const float* w, float* gx,
                            float* gw, float* gb, int64_t t, int64_t k, int64_t n, int threads) {
  const int64_t n_pad = round_up(n, MR), k_pad = round_up(k, NR);
  if (gw) std::fill(gw, gw + n * k, 0.f);
  if (gb) std::fill(gb, gb + n, 0.f);
  if (t == 0) return;
  // W's panels for gx = g' W: panel element (p, col) = W[p, col], depth n
  Buffer wpack(gx ? static_cast<size_t>(k_pad) * std::max<int64_t>(n, 1) : 1);
  if (gx) pack_n(w, n, k, k, wpack.get(), n);
  // whole micro-tiles in both directions: gW's operands are read in place (no copies)
  const bool in_place = n % MR == 0 && k % NR == 0;
  const int64_t passes = (t + LIN_KC - 1) / LIN_KC;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, passes)));
  std::vector<Buffer> partial(gw ? threads : 0);
  for (auto& acc : partial) acc.reset(static_cast<size_t>(n_pad) * k_pad, true);
  std::vector<double> bias_sums(gb ? static_cast<size_t>(threads) * n : 0, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int id = thread_id();
    const auto [p0, p1] = thread_share(passes);  // this thread's tokens, whole passes
    Buffer gbuf(act ? static_cast<size_t>(LIN_KC) * n : 1);
    Buffer tail(static_cast<size_t>(MR) * std::max<int64_t>(n, 1)), tile(static_cast<size_t>(BS) * k_pad);
    Buffer apack(in_place ? 1 : static_cast<size_t>(n_pad) * LIN_KC);
    Buffer bpack(in_place ? 1 : static_cast<size_t>(k_pad) * LIN_KC);
    std::vector<float> colsum(gb ? n : 0);
    bool first = true;
    for (int64_t pass = p0; pass < p1; ++pass) {
      const int64_t t0 = pass * LIN_KC, kc = std::min<int64_t>(LIN_KC, t - t0);
      // g' for this pass's tokens: g itself, or g * act'(y) in a buffer that stays in cache
      const float* gp = g + t0 * n;
      if (act) {
        act_grad(gp, y + t0 * n, kc * n, act, gbuf.get());
        gp = gbuf.get();
      }
      if (gb) colsum_pass(gp, kc, n, colsum.data(), bias_sums.data() + static_cast<size_t>(id) * n);
      if (gx)
        for (int64_t r0 = 0; r0 < kc; r0 += BS)
          rows_block(gp + r0 * n, n, std::min<int64_t>(BS, kc - r0), wpack.get(), k, n, nullptr, 0,
                     gx + (t0 + r0) * k, k, tail.get(), tile.get());
      if (gw) weight_grad_pass(gp, n, x + t0 * k, k, kc, partial[id].get(), !first, apack.get(), bpack.get());
      first = false;
    }
  }
  if (gw) sum_partials(partial, n, k, gw);
  if (gb) sum_bias(bias_sums, threads, n, gb);
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
