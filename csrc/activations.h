// ELU (alpha = 1) and the covariance activation ELU + 1 (floored at 1e-24), forward and backward,
// each in one vectorised, multi-threaded pass.
//
// PyTorch's CPU path spends three passes on (elu(x) + 1).clamp_min(1e-24) and three more on its
// backward, and its elu_backward recomputes exp(x) from the saved input. Here the backward works
// from the saved output y: for x <= 0, d elu / dx = exp(x) = elu(x) + 1, so the derivative is 1
// where x > 0 and y + 1 (ELU) or y (ELU + 1) elsewhere; x > 0 exactly where y > 0 (ELU) or y > 1
// (ELU + 1; a tiny positive x that rounds y to 1 has derivative 1 = y either way). Where the floor
// clamped the output (y <= 1e-24: expm1(x) + 1 rounds to 0 below x ~ -17) no gradient passes, as
// through clamp_min. NaN inputs give NaN outputs and gradients.
#pragma once
#include "gaussian_stack.h"

namespace mstein {
namespace MSTEIN_ISA {

// expm1(x) for x <= 0 lanes (the branch ELU uses): a degree-8 Taylor polynomial on [-0.5, 0]
// (truncation below 1e-8 relative), exp(x) - 1 below (|exp(x) - 1| >= 0.39 there, so the absolute
// error of vexp stays a few ulp of the result). -inf gives -1.
static inline vf vexpm1_nonpositive(vf x) {
  vf p = splat(1.0f / 40320.0f);
  p = p * x + (1.0f / 5040.0f);
  p = p * x + (1.0f / 720.0f);
  p = p * x + (1.0f / 120.0f);
  p = p * x + (1.0f / 24.0f);
  p = p * x + (1.0f / 6.0f);
  p = p * x + 0.5f;
  const vf small = p * (x * x) + x;
  const vf large = vexp(x) - 1.0f;
  return x >= splat(-0.5f) ? small : large;
}

constexpr int64_t ACT_CHUNK = 1 << 14;

// elu(v) (plus_one = 0) or max(elu(v) + 1, 1e-24) (plus_one = 1), per lane.
static inline vf elu_lane(vf v, int plus_one) {
  vf y = v > splat(0.0f) ? v : vexpm1_nonpositive(v);
  if (!plus_one) return y;
  y = y + 1.0f;
  // floor only where it binds (a NaN stays NaN: the comparison is false for it)
  return y < splat(COV_FLOOR) ? splat(COV_FLOOR) : y;
}

// out[i] = elu(x[i]) (plus_one = 0) or max(elu(x[i]) + 1, 1e-24) (plus_one = 1); x and out may alias.
static void elu_forward(const float* x, float* out, int64_t n, int plus_one, int threads) {
  const int64_t chunks = (n + ACT_CHUNK - 1) / ACT_CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * ACT_CHUNK, end = std::min(n, begin + ACT_CHUNK);
    int64_t i = begin;
    for (; i + VW <= end; i += VW) storeu(out + i, elu_lane(loadu(x + i), plus_one));
    if (i < end) {  // the tail through a padded vector
      float buf[VW] = {};
      std::memcpy(buf, x + i, (end - i) * sizeof(float));
      storeu(buf, elu_lane(loadu(buf), plus_one));
      std::memcpy(out + i, buf, (end - i) * sizeof(float));
    }
  }
}

static inline vf elu_grad_lane(vf g, vf y, int plus_one) {
  if (plus_one) {
    const vf d = y > splat(1.0f) ? splat(1.0f) : y;
    return y > splat(COV_FLOOR) ? g * d : (y != y ? g * y : vf{});  // NaN output: NaN gradient
  }
  return y > splat(0.0f) ? g : g * (y + 1.0f);
}

// grad_in[i] = grad[i] * d act / dx at x[i], from the output y[i] of elu_forward (same plus_one);
// grad_in may alias grad.
static void elu_backward(const float* grad, const float* y, float* grad_in, int64_t n, int plus_one, int threads) {
  const int64_t chunks = (n + ACT_CHUNK - 1) / ACT_CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * ACT_CHUNK, end = std::min(n, begin + ACT_CHUNK);
    int64_t i = begin;
    for (; i + VW <= end; i += VW) storeu(grad_in + i, elu_grad_lane(loadu(grad + i), loadu(y + i), plus_one));
    if (i < end) {
      float gb[VW] = {}, yb[VW] = {};
      std::memcpy(gb, grad + i, (end - i) * sizeof(float));
      std::memcpy(yb, y + i, (end - i) * sizeof(float));
      storeu(gb, elu_grad_lane(loadu(gb), loadu(yb), plus_one));
      std::memcpy(grad_in + i, gb, (end - i) * sizeof(float));
    }
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
