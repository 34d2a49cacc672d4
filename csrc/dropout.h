// Dropout with a counter-based random mask: element i is kept iff hash(seed, i) >= threshold
// (threshold = p * 2^32), so the mask is a pure function of (seed, i). The forward and the
// backward (which regenerates the mask instead of storing it) therefore agree, and the result does
// not depend on the number of threads. The hash is two rounds of a 32-bit integer finaliser
// ("lowbias32": xor-shift / multiply), which the compiler vectorises.
#pragma once
#include <cstdint>

namespace mstein {
namespace MSTEIN_ISA {

// (a template: the same finaliser per lane of a uint32 vector, csrc/residual_norm.h)
template <class U>
static inline U mix32(U h) {
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

// The mask of one seed: element i is kept iff hash(seed, i) >= threshold. The high half of the
// index enters the key, so indices >= 2^32 do not repeat the mask.
struct DropoutMask {
  uint32_t threshold;
  float scale;
  uint32_t key_lo, seed_hi;
  DropoutMask(uint64_t seed, uint32_t threshold_, float scale_)
      : threshold(threshold_), scale(scale_), key_lo(mix32(static_cast<uint32_t>(seed) ^ 0x9e3779b9u)),
        seed_hi(static_cast<uint32_t>(seed >> 32)) {}
  // the key of the indices i with the same i >> 32
  uint32_t key_hi(int64_t i) const { return mix32(seed_hi + static_cast<uint32_t>(i >> 32) * 0x85ebca6bu); }
  // v dropped or scaled as element i (key_hi: key_hi(i))
  float apply(float v, int64_t i, uint32_t key_hi_i) const {
    const uint32_t u = mix32(mix32(static_cast<uint32_t>(i) ^ key_lo) + key_hi_i);
    return u >= threshold ? v * scale : 0.f;
  }
};

// out[i] = keep(i) ? x[i] * scale : 0 for i < n (x and out may alias).
static void dropout(const float* x, float* out, int64_t n, uint32_t threshold, float scale, uint64_t seed,
                    int threads) {
  constexpr int64_t CHUNK = 1 << 14;  // divides 2^32: i >> 32 is constant within a chunk
  const int64_t chunks = (n + CHUNK - 1) / CHUNK;
  const DropoutMask mask(seed, threshold, scale);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * CHUNK, end = begin + CHUNK < n ? begin + CHUNK : n;
    const uint32_t key_hi = mask.key_hi(begin);
    for (int64_t i = begin; i < end; ++i) out[i] = mask.apply(x[i], i, key_hi);
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
