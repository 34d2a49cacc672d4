// The distributional encoder's position-wise feed-forward product, z = ELU(x W1^T + b1) W2^T + b2,
// forward and backward without its wide hidden layer ever leaving the caches. (Any two dense layers
// in a row: the hidden activation may also be none or ELU + 1, as for the value projection and
// output dense layer of the attention over the views' leading padding.)
//
// As two dense layers (csrc/linear.h) the hidden activations h [t, n] (n = 4 x the width, 256 for
// MStein) are written by the first, read by the second, kept for the backward, read again there for
// W2's gradient and the ELU's derivative, and their gradient is written and read once more: about
// five passes over a tensor four times the size of the layer's input, on data far larger than the
// caches. Here each block of rows computes h in a cache-resident buffer and feeds it straight into
// the second product; the backward recomputes h per pass of tokens (one more product of depth k,
// a sixth of the block's backward flops) and forms every gradient from it in cache:
//   h = ELU(x W1^T + b1);  gh = (g W2) * ELU'(h);
//   gW2 = g^T h,  gb2 = colsum(g),  gW1 = gh^T x,  gb1 = colsum(gh),  gx = gh W1.
// The blocking, the order of every sum and the per-thread token ranges are those of linear.h's two
// layers, so forward and gradients equal the two separate dense layers' bit for bit (for the same
// thread count); nothing of size [t, n] is stored for the backward.
#pragma once
#include "linear.h"

namespace mstein {
namespace MSTEIN_ISA {

// z [t, m] = act(x [t, k] W1^T + b1) W2^T + b2 for W1 [n, k], b1 [n], W2 [m, n], b2 [m] (biases may be
// null); act as linear.h's: 0 none, 1 ELU (the feed-forward block), 2 ELU + 1.
static void ff_forward(const float* x, const float* w1, const float* b1, const float* w2, const float* b2, float* z,
                       int64_t t, int64_t k, int64_t n, int64_t m, int act, int threads) {
  const int64_t n_pad = round_up(n, NR), m_pad = round_up(m, NR);
  Buffer w1pack(static_cast<size_t>(n_pad) * std::max<int64_t>(k, 1));
  Buffer w2pack(static_cast<size_t>(m_pad) * std::max<int64_t>(n, 1));
  pack_b_rows(w1, n, k, k, w1pack.get(), n_pad);
  pack_b_rows(w2, m, n, n, w2pack.get(), m_pad);
  const int64_t blocks = (t + BS - 1) / BS;
#pragma omp parallel num_threads(threads)
  {
    Buffer tail(static_cast<size_t>(MR) * std::max<int64_t>(std::max(k, n), 1));
    Buffer tile(static_cast<size_t>(BS) * std::max(n_pad, m_pad));
    Buffer h(static_cast<size_t>(BS) * std::max<int64_t>(n, 1));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * BS, rows = std::min<int64_t>(BS, t - r0);
      rows_block(x + r0 * k, k, rows, w1pack.get(), n, k, b1, act, h.get(), n, tail.get(), tile.get());
      rows_block(h.get(), n, rows, w2pack.get(), m, n, b2, 0, z + r0 * m, m, tail.get(), tile.get());
    }
  }
}

// From g [t, m] = dL/dz: gx [t, k], gW1 [n, k], gb1 [n], gW2 [m, n], gb2 [m] (each may be null: not
// computed) of z = ff_forward(x, W1, b1, W2, b2, act).
static void ff_backward(const float* g, const float* x, const float* w1, const float* b1, const float* w2, float* gx,
                        float* gw1, float* gb1, float* gw2, float* gb2, int64_t t, int64_t k, int64_t n, int64_t m,
                        int act, int threads) {
  if (gw1) std::fill(gw1, gw1 + n * k, 0.f);
  if (gb1) std::fill(gb1, gb1 + n, 0.f);
  if (gw2) std::fill(gw2, gw2 + m * n, 0.f);
  if (gb2) std::fill(gb2, gb2 + m, 0.f);
  if (t == 0) return;
  const bool want_gh = gx || gw1 || gb1;  // the hidden layer's gradient is needed
  const int64_t n_padr = round_up(n, NR), k_padr = round_up(k, NR);
  // W1 in B panels for the recompute of h; W2's and W1's N panels for gh = g W2 and gx = gh W1
  Buffer w1b(static_cast<size_t>(n_padr) * std::max<int64_t>(k, 1));
  pack_b_rows(w1, n, k, k, w1b.get(), n_padr);
  Buffer w2n(want_gh ? static_cast<size_t>(n_padr) * std::max<int64_t>(m, 1) : 1);
  if (want_gh) pack_n(w2, m, n, n, w2n.get(), m);
  Buffer w1n(gx ? static_cast<size_t>(k_padr) * std::max<int64_t>(n, 1) : 1);
  if (gx) pack_n(w1, n, k, k, w1n.get(), n);
  const int64_t passes = (t + LIN_KC - 1) / LIN_KC;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, passes)));
  std::vector<Buffer> part1(gw1 ? threads : 0), part2(gw2 ? threads : 0);
  for (auto& acc : part1) acc.reset(static_cast<size_t>(round_up(n, MR)) * k_padr, true);
  for (auto& acc : part2) acc.reset(static_cast<size_t>(round_up(m, MR)) * n_padr, true);
  std::vector<double> sums1(gb1 ? static_cast<size_t>(threads) * n : 0, 0.0);
  std::vector<double> sums2(gb2 ? static_cast<size_t>(threads) * m : 0, 0.0);
  const int64_t widest = std::max(std::max(k, n), m);
#pragma omp parallel num_threads(threads)
  {
    const int id = thread_id();
    const auto [p0, p1] = thread_share(passes);  // this thread's tokens, whole passes
    Buffer h(static_cast<size_t>(LIN_KC) * std::max<int64_t>(n, 1));
    Buffer gh(want_gh ? static_cast<size_t>(LIN_KC) * std::max<int64_t>(n, 1) : 1);
    Buffer tail(static_cast<size_t>(MR) * std::max<int64_t>(widest, 1));
    Buffer tile(static_cast<size_t>(BS) * round_up(widest, NR));
    Buffer apack(static_cast<size_t>(round_up(std::max(n, m), MR)) * LIN_KC);
    Buffer bpack(static_cast<size_t>(round_up(std::max(k, n), NR)) * LIN_KC);
    std::vector<float> colsum(std::max(n, m));
    bool first = true;
    for (int64_t pass = p0; pass < p1; ++pass) {
      const int64_t t0 = pass * LIN_KC, kc = std::min<int64_t>(LIN_KC, t - t0);
      const float* gp = g + t0 * m;
      const float* xp = x + t0 * k;
      // h for this pass's tokens, blocked as the forward
      for (int64_t r0 = 0; r0 < kc; r0 += BS)
        rows_block(xp + r0 * k, k, std::min<int64_t>(BS, kc - r0), w1b.get(), n, k, b1, act, h.get() + r0 * n, n,
                   tail.get(), tile.get());
      // the second layer: gb2, gW2 = g^T h, gh = g W2
      if (gb2) colsum_pass(gp, kc, m, colsum.data(), sums2.data() + static_cast<size_t>(id) * m);
      if (gw2) weight_grad_pass(gp, m, h.get(), n, kc, part2[id].get(), !first, apack.get(), bpack.get());
      if (want_gh) {
        for (int64_t r0 = 0; r0 < kc; r0 += BS)
          rows_block(gp + r0 * m, m, std::min<int64_t>(BS, kc - r0), w2n.get(), n, m, nullptr, 0, gh.get() + r0 * n,
                     n, tail.get(), tile.get());
        if (act) act_grad(gh.get(), h.get(), kc * n, act, gh.get());  // through the activation, from its output
        // the first layer: gb1, gx = gh W1, gW1 = gh^T x
        if (gb1) colsum_pass(gh.get(), kc, n, colsum.data(), sums1.data() + static_cast<size_t>(id) * n);
        if (gx)
          for (int64_t r0 = 0; r0 < kc; r0 += BS)
            rows_block(gh.get() + r0 * n, n, std::min<int64_t>(BS, kc - r0), w1n.get(), k, n, nullptr, 0,
                       gx + (t0 + r0) * k, k, tail.get(), tile.get());
        if (gw1) weight_grad_pass(gh.get(), n, xp, k, kc, part1[id].get(), !first, apack.get(), bpack.get());
      }
      first = false;
    }
  }
  if (gw1) sum_partials(part1, n, k, gw1);
  if (gb1) sum_bias(sums1, threads, n, gb1);
  if (gw2) sum_partials(part2, m, n, gw2);
  if (gb2) sum_bias(sums2, threads, m, gb2);
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
