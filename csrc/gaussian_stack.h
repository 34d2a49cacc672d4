// x = [mean ; sqrt(max(cov, 1e-24))] rows (W2 becomes a squared Euclidean distance on them) and
// the way back for gradients: d mean = dx[:D], d cov = dx[D:] / (2 sqrt(cov)) where cov >= 1e-24
// (the clamp of the official code passes no gradient below its floor). The kernels may shift all
// rows of x by one vector (W is translation invariant; it removes cancellation in |x|^2 + |y|^2 -
// 2 x.y), so the standard deviations are always taken from cov, never from x.
#pragma once
#include "gemm.h"

namespace mstein {
namespace MSTEIN_ISA {

constexpr float COV_FLOOR = 1e-24f;

static void stack_gaussian(const float* mean, const float* cov, int64_t rows, int64_t d, float* x, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* m = mean + r * d;
    const float* c = cov + r * d;
    float* o = x + r * 2 * d;
    std::memcpy(o, m, d * sizeof(float));
    for (int64_t j = 0; j < d; ++j) o[d + j] = std::sqrt(std::max(c[j], COV_FLOOR));
  }
}

static void unstack_gradient(const float* gx, const float* cov, int64_t rows, int64_t d, float* g_mean, float* g_cov,
                             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gx + r * 2 * d;
    const float* c = cov + r * d;
    std::memcpy(g_mean + r * d, g, d * sizeof(float));
    float* gc = g_cov + r * d;
    for (int64_t j = 0; j < d; ++j) gc[j] = c[j] >= COV_FLOOR ? g[d + j] * 0.5f / std::sqrt(c[j]) : 0.f;
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
