// Rows of a small table, gathered, dropped out and activated in one pass: the embedded leading
// padding of the views (STOSA._encode_lead_packed), where every padding position of every row is
// the same table row (the LayerNorm of the padding item's and the position's embeddings) until its
// own dropout mask. As separate ops that is a gather, a dropout and an activation over [tokens, h]
// (about ten passes over a tensor of 80k x 64 floats each way, forward and backward); here the
// forward writes the output once and the backward reads the gradient and the output once, summing
// into the table's gradient per thread.
//   y[t] = act(dropout(table[pos[t]])),   gtable[q] = sum_{t: pos[t] = q} dropout'(act'(y[t]) * g[t]).
// The dropout mask of element (t, c) is that of index t * h + c (csrc/dropout.h), so y equals the
// separate ops on the gathered [tokens, h] tensor bit for bit.
#pragma once
#include <cstring>
#include <vector>

#include "activations.h"
#include "dropout.h"
#include "linear.h"

namespace mstein {
namespace MSTEIN_ISA {

// dst[j] = dropout(src[j]) as element base + j, for j < h (threshold 0: a copy).
static inline void drop_row(const float* src, float* dst, int64_t h, int64_t base, const DropoutMask& mask,
                            uint32_t threshold) {
  if (threshold == 0) {
    if (dst != src) std::memcpy(dst, src, h * sizeof(float));
  } else if ((base >> 32) == ((base + h - 1) >> 32)) {  // one high key for the whole row
    const uint32_t key_hi = mask.key_hi(base);
    for (int64_t j = 0; j < h; ++j) dst[j] = mask.apply(src[j], base + j, key_hi);
  } else {
    for (int64_t j = 0; j < h; ++j) dst[j] = mask.apply(src[j], base + j, mask.key_hi(base + j));
  }
}

// y [tokens, h] = act(dropout(table[pos[t]])) with table [p, h], pos [tokens] in [0, p); act 0 none,
// 1 ELU, 2 max(ELU + 1, 1e-24); threshold 0: no dropout.
static void position_dropout_forward(const float* table, const int64_t* pos, int64_t tokens, int64_t h,
                                     uint32_t threshold, float scale, uint64_t seed, int act, float* y, int threads) {
  const DropoutMask mask(seed, threshold, scale);
  const int64_t per = std::max<int64_t>(1, ACT_CHUNK / std::max<int64_t>(h, 1));  // tokens per chunk
  const int64_t chunks = (tokens + per - 1) / per;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t1 = std::min(tokens, (c + 1) * per);
    for (int64_t t = c * per; t < t1; ++t) {
      float* row = y + t * h;
      drop_row(table + pos[t] * h, row, h, t * h, mask, threshold);
      if (act == 0) continue;
      int64_t j = 0;
      for (; j + VW <= h; j += VW) storeu(row + j, elu_lane(loadu(row + j), act - 1));
      if (j < h) {  // the tail through a padded vector
        float buf[VW] = {};
        std::memcpy(buf, row + j, (h - j) * sizeof(float));
        storeu(buf, elu_lane(loadu(buf), act - 1));
        std::memcpy(row + j, buf, (h - j) * sizeof(float));
      }
    }
  }
}

// gtable [p, h] from g = dL/dy and the forward's output y [tokens, h]: each thread sums its
// contiguous share of the tokens in order (in double), then the threads' sums are added in order.
static void position_dropout_backward(const float* g, const float* y, const int64_t* pos, int64_t tokens, int64_t h,
                                      int64_t p, uint32_t threshold, float scale, uint64_t seed, int act,
                                      float* gtable, int threads) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, tokens)));
  std::vector<double> partial(static_cast<size_t>(threads) * p * h, 0.0);
  const DropoutMask mask(seed, threshold, scale);
#pragma omp parallel num_threads(threads)
  {
    const auto [t0, t1] = thread_share(tokens);
    double* acc = partial.data() + static_cast<size_t>(thread_id()) * p * h;
    std::vector<float> local(static_cast<size_t>(round_up(h, VW)), 0.f);
    float* tmp = local.data();
    for (int64_t t = t0; t < t1; ++t) {
      const float* gr = g + t * h;
      if (act == 0)
        std::memcpy(tmp, gr, h * sizeof(float));
      else
        act_grad(gr, y + t * h, h, act, tmp);  // through the activation, from its output (linear.h)
      drop_row(tmp, tmp, h, t * h, mask, threshold);  // the dropout is linear: the same mask and scale
      double* dst = acc + pos[t] * h;
      for (int64_t j = 0; j < h; ++j) dst[j] += tmp[j];
    }
  }
  for (int64_t i = 0; i < p * h; ++i) {
    double s = 0.0;
    for (int k = 0; k < threads; ++k) s += partial[static_cast<size_t>(k) * p * h + i];
    gtable[i] = static_cast<float>(s);
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
