// The end of every encoder sub-layer, y = act(LayerNorm(dropout(z) + x)), in one pass over the
// rows (h features each) forward and one backward; act is none or the covariance activation
// ELU + 1 (floored at 1e-24, as csrc/activations.h).
//
// Unfused, PyTorch spends a dropout pass, an add, a LayerNorm and (for the covariance stream) an
// activation pass on it forward, and as many backward, each a full read and write of [rows, h].
// Here the forward reads z and x once and writes y and the normalised rows xhat (what the backward
// needs, with 1/std per row); the backward reads the upstream gradient, xhat (and y for the
// activation's derivative) and writes the gradients of z and x. The dropout mask is the dropout
// kernel's (csrc/dropout.h) for the same seed and the same flat index r * h + j, so the fused
// result equals the separate ops' up to the rounding of the LayerNorm's sums.
//
// LayerNorm: mean and variance per row (two passes over the row in cache, vector lanes added in
// double; every loop is written in vectors with a scalar tail, the dropout hash included), xhat = (s - mean) / sqrt(var + eps), u = xhat * gamma + beta. Backward with
// gu = gy * act'(y), ghat = gu * gamma: gs = rstd * (ghat - mean(ghat) - xhat * mean(ghat * xhat)),
// gx = gs, gz = dropout(gs); dgamma = sum_rows gu * xhat, dbeta = sum_rows gu, summed in fixed
// chunks of rows and then over the chunks in order: the same bits for any thread count.
#pragma once
#include "activations.h"
#include "dropout.h"

namespace mstein {
namespace MSTEIN_ISA {

constexpr int64_t NORM_CHUNK = 256;  // rows per partial sum of the gamma / beta gradients

typedef uint32_t vu __attribute__((vector_size(VW * 4)));

// The dropout mask of csrc/dropout.h applied to VW (vector) or single elements of one row whose
// flat indices i = base + j share i >> 32 (rows that straddle a multiple of 2^32 use `single`).
struct RowMask {
  const DropoutMask& mask;
  uint32_t key_hi;
  vu iota;
  RowMask(const DropoutMask& m, int64_t base) : mask(m), key_hi(m.key_hi(base)) {
    for (int l = 0; l < VW; ++l) iota[l] = static_cast<uint32_t>(l);
  }
  vf vector(vf v, int64_t i) const {  // elements i .. i + VW - 1
    const vu idx = iota + static_cast<uint32_t>(i);
    const vu u = mix32(mix32(idx ^ mask.key_lo) + key_hi);
    return u >= mask.threshold ? v * mask.scale : vf{};
  }
  float single(float v, int64_t i) const { return mask.apply(v, i, mask.key_hi(i)); }
};

static inline double hsum_double(vf v) {
  double s = 0.0;
  for (int l = 0; l < VW; ++l) s += v[l];
  return s;
}

// y, xhat [rows, h] and rstd [rows] from z, x [rows, h], gamma, beta [h]; threshold 0 = no dropout.
static void residual_norm_forward(const float* z, const float* x, const float* gamma, const float* beta, int64_t rows,
                                  int64_t h, uint32_t threshold, float scale, uint64_t seed, float eps, int act,
                                  float* y, float* xhat, float* rstd, int threads) {
  const DropoutMask mask(seed, threshold, scale);
  const int64_t hv = h - h % VW;  // the part of a row in whole vectors
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> s(h);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t base = r * h;
      const float* zr = z + base;
      const float* xr = x + base;
      float* sr = s.data();
      const RowMask rm(mask, base);
      const bool straddles = (base >> 32) != ((base + h - 1) >> 32);
      vf acc{};
      int64_t j = 0;
      if (threshold == 0) {
        for (; j < hv; j += VW) {
          const vf v = loadu(zr + j) * scale + loadu(xr + j);
          storeu(sr + j, v);
          acc += v;
        }
        for (; j < h; ++j) sr[j] = zr[j] * scale + xr[j];
      } else if (!straddles) {
        for (; j < hv; j += VW) {
          const vf v = rm.vector(loadu(zr + j), base + j) + loadu(xr + j);
          storeu(sr + j, v);
          acc += v;
        }
        for (; j < h; ++j) sr[j] = rm.single(zr[j], base + j) + xr[j];
      } else {
        for (; j < h; ++j) sr[j] = rm.single(zr[j], base + j) + xr[j];
        for (j = 0; j < hv; j += VW) acc += loadu(sr + j);
      }
      double sum = hsum_double(acc);
      for (j = hv; j < h; ++j) sum += sr[j];
      const float mean = static_cast<float>(sum / h);
      vf acc2{};
      for (j = 0; j < hv; j += VW) {
        const vf d = loadu(sr + j) - mean;
        acc2 += d * d;
      }
      double sq = hsum_double(acc2);
      for (j = hv; j < h; ++j) sq += static_cast<double>(sr[j] - mean) * (sr[j] - mean);
      const float rs = static_cast<float>(1.0 / std::sqrt(sq / h + eps));
      rstd[r] = rs;
      float* xh = xhat + base;
      float* yr = y + base;
      for (j = 0; j < hv; j += VW) {
        const vf n = (loadu(sr + j) - mean) * rs;
        storeu(xh + j, n);
        const vf u = n * loadu(gamma + j) + loadu(beta + j);
        storeu(yr + j, act ? elu_lane(u, 1) : u);
      }
      for (; j < h; ++j) {
        const float n = (sr[j] - mean) * rs;
        xh[j] = n;
        const float u = n * gamma[j] + beta[j];
        yr[j] = act ? elu_lane(splat(u), 1)[0] : u;
      }
    }
  }
}

// From gy = dL/dy (and y when act != 0), xhat, rstd of the forward: gz, gx [rows, h], ggamma,
// gbeta [h]; each output may be null (not computed).
static void residual_norm_backward(const float* gy, const float* y, int act, const float* xhat, const float* rstd,
                                   const float* gamma, int64_t rows, int64_t h, uint32_t threshold, float scale,
                                   uint64_t seed, float* gz, float* gx, float* ggamma, float* gbeta, int threads) {
  const DropoutMask mask(seed, threshold, scale);
  const int64_t chunks = (rows + NORM_CHUNK - 1) / NORM_CHUNK;
  const int64_t hv = h - h % VW;
  const bool want_params = ggamma || gbeta;
  std::vector<float> partial(want_params ? chunks * 2 * h : 0, 0.f);
  const bool want_inputs = gz || gx;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> gh(h);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      float* pg = want_params ? partial.data() + c * 2 * h : nullptr;
      const int64_t r_end = std::min(rows, (c + 1) * NORM_CHUNK);
      for (int64_t r = c * NORM_CHUNK; r < r_end; ++r) {
        const int64_t base = r * h;
        const float* g = gy + base;
        const float* xh = xhat + base;
        const float* yr = act ? y + base : nullptr;
        float* e = gh.data();
        vf acc1{}, acc2{};
        int64_t j = 0;
        for (; j < hv; j += VW) {
          const vf uj = act ? elu_grad_lane(loadu(g + j), loadu(yr + j), 1) : loadu(g + j);
          const vf xj = loadu(xh + j);
          if (pg) {
            storeu(pg + j, loadu(pg + j) + uj * xj);
            storeu(pg + h + j, loadu(pg + h + j) + uj);
          }
          const vf ej = uj * loadu(gamma + j);
          storeu(e + j, ej);
          acc1 += ej;
          acc2 += ej * xj;
        }
        double s1 = hsum_double(acc1), s2 = hsum_double(acc2);
        for (; j < h; ++j) {
          const float uj = act ? elu_grad_lane(splat(g[j]), splat(yr[j]), 1)[0] : g[j];
          if (pg) {
            pg[j] += uj * xh[j];
            pg[h + j] += uj;
          }
          e[j] = uj * gamma[j];
          s1 += e[j];
          s2 += static_cast<double>(e[j]) * xh[j];
        }
        if (!want_inputs) continue;
        const float c1 = static_cast<float>(s1 / h), c2 = static_cast<float>(s2 / h), rs = rstd[r];
        const RowMask rm(mask, base);
        const bool vector_mask = threshold != 0 && (base >> 32) == ((base + h - 1) >> 32);
        for (j = 0; j < hv; j += VW) {
          const vf gs = (loadu(e + j) - c1 - loadu(xh + j) * c2) * rs;
          if (gx) storeu(gx + base + j, gs);
          if (gz) {
            if (threshold == 0) {
              storeu(gz + base + j, gs * scale);
            } else if (vector_mask) {
              storeu(gz + base + j, rm.vector(gs, base + j));
            } else {
              for (int l = 0; l < VW; ++l) gz[base + j + l] = rm.single(gs[l], base + j + l);
            }
          }
        }
        for (; j < h; ++j) {
          const float gs = (e[j] - c1 - xh[j] * c2) * rs;
          if (gx) gx[base + j] = gs;
          if (gz) gz[base + j] = threshold == 0 ? gs * scale : rm.single(gs, base + j);
        }
      }
    }
  }
  if (!want_params) return;
  for (int64_t j = 0; j < h; ++j) {  // over the chunks in order: independent of the thread count
    double sg = 0.0, sb = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      sg += partial[c * 2 * h + j];
      sb += partial[c * 2 * h + h + j];
    }
    if (ggamma) ggamma[j] = static_cast<float>(sg);
    if (gbeta) gbeta[j] = static_cast<float>(sb);
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
