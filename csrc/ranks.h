// Full-ranking evaluation: the 0-based rank of each row's target among all items, in one pass over
// the score matrix (the PyTorch formulation makes six: mask, gather, compare, compare, and, sum).
//
// For row r with target column c: s_j = -inf where item j is excluded (the items of the user's
// input), else scores[r, j]; t = s_c; rank = #{j : s_j > t, or s_j == t and j < c} (ties: smaller id
// first). NaN compares false with everything, as in PyTorch (a NaN target ranks 0, a NaN item is
// never ahead). finite[r] = 1 when every raw score of the row is finite (the trainer's divergence
// check, in the same pass).
#pragma once
#include "gemm.h"

namespace mstein {
namespace MSTEIN_ISA {

typedef uint8_t vb __attribute__((vector_size(VW)));

static void rank_count(const float* scores, const uint8_t* excluded, const int64_t* cols, int64_t b, int64_t n,
                       int64_t* ranks, uint8_t* finite, int threads) {
  const float ninf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < b; ++r) {
    const float* s = scores + r * n;
    const uint8_t* ex = excluded + r * n;
    const int64_t c = cols[r];
    const float t = ex[c] ? ninf : s[c];
    vi count{}, iota{};
    for (int l = 0; l < VW; ++l) iota[l] = l;
    vi all_finite = vi{} - 1;
    const vf tv = splat(t);
    int64_t j = 0;
    for (; j + VW <= n; j += VW) {
      const vf raw = loadu(s + j);
      vb eb;
      std::memcpy(&eb, ex + j, VW);
      const vi is_ex = __builtin_convertvector(eb, vi) != 0;
      const vf v = is_ex ? splat(ninf) : raw;
      const vi before = (iota + static_cast<int32_t>(j)) < static_cast<int32_t>(c);
      count -= (v > tv) | ((v == tv) & before);  // true lanes are -1
      all_finite &= (raw - raw) == splat(0.0f);  // inf - inf and NaN - NaN are NaN
    }
    int64_t total = 0;
    bool ok = true;
    for (int l = 0; l < VW; ++l) {
      total += count[l];
      ok = ok && all_finite[l] != 0;
    }
    for (; j < n; ++j) {
      const float v = ex[j] ? ninf : s[j];
      total += (v > t) || (v == t && j < c);
      ok = ok && std::isfinite(s[j]);
    }
    ranks[r] = total;
    finite[r] = ok ? 1 : 0;
  }
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
