// Register-blocked matrix-product building blocks shared by the fused kernels.
//
// Included once per instruction set (isa_*.cpp) with MSTEIN_ISA (a namespace name), MSTEIN_VW
// (floats per vector register), MSTEIN_MR (rows of a micro-tile), MSTEIN_NV (vectors per
// micro-tile row) and MSTEIN_BS (rows of a block) defined. The code uses GCC/Clang vector extensions, so one source becomes
// AVX-512, AVX2 or SSE/NEON code depending on the flags of the translation unit.
//
// Every product is C[MR x NR] (+)= sum_p A[p][0..MR) (x) B[p][0..NR): A is a "broadcast" panel
// (MR values per step), B a "vector" panel (NR values per step). Operands are packed into
// these panel layouts once, zero-padded, so the micro-kernel never branches on edges.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace mstein {
namespace MSTEIN_ISA {

constexpr int VW = MSTEIN_VW;
constexpr int MR = MSTEIN_MR;
constexpr int NV = MSTEIN_NV;
constexpr int NR = VW * NV;
constexpr int BS = MSTEIN_BS;  // rows of a tile: a multiple of MR and NR (set per instruction set)
constexpr int KC = 768;  // depth of one pass of the micro-kernel (keeps panels in L1/L2)
static_assert(BS % MR == 0 && BS % NR == 0 && BS % VW == 0, "tile size must be a multiple of the micro-tile");

typedef float vf __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

static inline vf splat(float v) { return vf{} + v; }
static inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}
static inline void storeu(float* p, vf v) { std::memcpy(p, &v, sizeof(vf)); }
static inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < VW; ++i) s += v[i];
  return s;
}
static inline float hmax(vf v) {
  float s = v[0];
  for (int i = 1; i < VW; ++i) s = std::max(s, v[i]);
  return s;
}

// exp(x) for float32 lanes: Cody-Waite range reduction and a degree-6 polynomial (error ~2 ulp).
// Arguments below -87 give exactly 0 (no denormals are produced; -inf gives 0, too).
static inline vf vexp(vf x) {
  const vi under = x < splat(-87.0f);
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf nf = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vi n = __builtin_convertvector(nf, vi);
  const vi bits = (vi)p + (n << 23);
  return (vf)(bits & ~under);
}

// 64-byte aligned float buffer.
struct Buffer {
  float* ptr = nullptr;
  Buffer() = default;
  explicit Buffer(size_t count, bool zero = false) { reset(count, zero); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { std::free(ptr); }
  void reset(size_t count, bool zero = false) {
    std::free(ptr);
    size_t bytes = ((std::max<size_t>(count, 1) * sizeof(float)) + 63) / 64 * 64;
    ptr = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!ptr) throw std::bad_alloc();
    if (zero) std::memset(ptr, 0, bytes);
  }
  float* get() const { return ptr; }
};

// Flush denormals to zero in this thread while in scope (x86: MXCSR FTZ and DAZ). With
// temperature 1e-6 most softmax terms are tiny; denormal arithmetic would be ~100x slower.
struct DenormalsOff {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned int saved;
  DenormalsOff() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~DenormalsOff() { _mm_setcsr(saved); }
#endif
};

static inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// C[MR x NR] (ldc) = (accumulate ? C : 0) + sum_{p < kc} A(r, p) * B(p, c), with the operands read
// through strides: A(r, p) = a[r * a_row + p * a_depth] (MR scalars per depth step, broadcast) and
// B(p, c) = b[p * b_depth + c] (NR consecutive values per step, vector loads). Always inlined, so
// the strides the wrappers below pass as constants fold into the addressing.
__attribute__((always_inline)) static inline void micro_kernel_strided(int64_t kc, const float* __restrict a,
                                                                       int64_t a_row, int64_t a_depth,
                                                                       const float* __restrict b, int64_t b_depth,
                                                                       float* __restrict c, int64_t ldc,
                                                                       bool accumulate) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  for (int64_t p = 0; p < kc; ++p) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = loadu(b + p * b_depth + v * VW);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const float av = a[r * a_row + p * a_depth];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = c + r * ldc + v * VW;
      storeu(dst, accumulate ? loadu(dst) + acc[r][v] : acc[r][v]);
    }
}

// Both operands packed: A in broadcast panels (A(r, p) = a[p * MR + r]), B in vector panels
// (B(p, c) = b[p * NR + c]).
static inline void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* __restrict c,
                                int64_t ldc, bool accumulate) {
  micro_kernel_strided(kc, a, 1, MR, b, NR, c, ldc, accumulate);
}

// A read in place from a row-major matrix (A(r, p) = a[r * lda + p]): the broadcasts are scalar
// loads either way, so this costs the micro-kernel nothing and saves packing A. B packed.
static inline void micro_kernel_rows(int64_t kc, const float* __restrict a, int64_t lda, const float* __restrict b,
                                     float* __restrict c, int64_t ldc, bool accumulate) {
  micro_kernel_strided(kc, a, lda, 1, b, NR, c, ldc, accumulate);
}

// Both read in place: A(r, p) = a[r + p * a_step] (the transpose of a row-major matrix), B(p, c) =
// b[p * b_step + c] (a row-major matrix): the weight gradient g^T x without copies.
static inline void micro_kernel_tn(int64_t kc, const float* __restrict a, int64_t a_step, const float* __restrict b,
                                   int64_t b_step, float* __restrict c, int64_t ldc, bool accumulate) {
  micro_kernel_strided(kc, a, 1, a_step, b, b_step, c, ldc, accumulate);
}

// Broadcast-panel layout ("A"): rows in groups of MR, depth-major within a group:
// element (row, p) at ((row / MR) * depth + p) * MR + row % MR. Rows >= rows are zero.
static void pack_a_rows(const float* src, int64_t rows, int64_t depth, int64_t ld, float* dst, int64_t rows_pad) {
  for (int64_t g = 0; g < rows_pad / MR; ++g) {
    float* out = dst + g * depth * MR;
    for (int r = 0; r < MR; ++r) {
      const int64_t row = g * MR + r;
      if (row < rows) {
        const float* in = src + row * ld;
        for (int64_t p = 0; p < depth; ++p) out[p * MR + r] = in[p];
      } else {
        for (int64_t p = 0; p < depth; ++p) out[p * MR + r] = 0.f;
      }
    }
  }
}

// The same layout for the transpose of a [depth x rows] matrix (column j of src is row j).
static void pack_a_cols(const float* src, int64_t rows, int64_t depth, int64_t ld, float* dst, int64_t rows_pad) {
  for (int64_t g = 0; g < rows_pad / MR; ++g) {
    float* out = dst + g * depth * MR;
    for (int64_t p = 0; p < depth; ++p) {
      const float* in = src + p * ld + g * MR;
      for (int r = 0; r < MR; ++r) out[p * MR + r] = (g * MR + r < rows) ? in[r] : 0.f;
    }
  }
}

// Vector-panel layout of rows ("B", for Gram products X Y^T): rows in groups of NR,
// element (row, p) at ((row / NR) * depth + p) * NR + row % NR.
static void pack_b_rows(const float* src, int64_t rows, int64_t depth, int64_t ld, float* dst, int64_t rows_pad) {
  for (int64_t g = 0; g < rows_pad / NR; ++g) {
    float* out = dst + g * depth * NR;
    for (int c = 0; c < NR; ++c) {
      const int64_t row = g * NR + c;
      if (row < rows) {
        const float* in = src + row * ld;
        for (int64_t p = 0; p < depth; ++p) out[p * NR + c] = in[p];
      } else {
        for (int64_t p = 0; p < depth; ++p) out[p * NR + c] = 0.f;
      }
    }
  }
}

// Vector-panel layout of columns ("N", for products Q X): the K columns of X in groups of NR,
// element (row, col) at ((col / NR) * rows_pad + row) * NR + col % NR, zero-padded to K_pad.
static void pack_n(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst, int64_t rows_pad) {
  const int64_t groups = round_up(cols, NR) / NR;
  for (int64_t g = 0; g < groups; ++g) {
    float* out = dst + g * rows_pad * NR;
    const int64_t width = std::min<int64_t>(NR, cols - g * NR);
    for (int64_t row = 0; row < rows_pad; ++row) {
      float* o = out + row * NR;
      if (row < rows && width == NR) {
        std::memcpy(o, src + row * ld + g * NR, NR * sizeof(float));
      } else {
        for (int c = 0; c < NR; ++c) o[c] = (row < rows && c < width) ? src[row * ld + g * NR + c] : 0.f;
      }
    }
  }
}

// Gram tile C[BS x BS] (ldc = BS) = rows [a_row0, +BS) of an A-packed operand times the rows
// [b_row0, +BS) of a B-packed operand, over the full depth. With `rows` / `cols` < BS only the
// micro-tiles covering C[0, rows) x [0, cols) are computed (the rest of C is left as it was; the
// operands need only those rows packed): small problems (attention over short sequences) then
// cost what they use instead of a whole BS x BS tile.
static void gram_tile(const float* apack, int64_t a_row0, const float* bpack, int64_t b_row0, int64_t depth,
                      float* c, int64_t rows = BS, int64_t cols = BS) {
  const int64_t ip_end = (rows + MR - 1) / MR, jp_end = (cols + NR - 1) / NR;
  for (int64_t k0 = 0; k0 < depth; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, depth - k0);
    for (int64_t jp = 0; jp < jp_end; ++jp) {
      const float* b = bpack + ((b_row0 / NR + jp) * depth + k0) * NR;
      for (int64_t ip = 0; ip < ip_end; ++ip) {
        const float* a = apack + ((a_row0 / MR + ip) * depth + k0) * MR;
        micro_kernel(kc, a, b, c + ip * MR * BS + jp * NR, BS, k0 > 0);
      }
    }
  }
}

// gram_tile with the A rows read in place from a row-major matrix (A(r, p) = a[r * lda + p], all BS
// rows present): no packed copy of A; the same sums in the same order as gram_tile.
static void gram_tile_rows(const float* a, int64_t lda, const float* bpack, int64_t b_row0, int64_t depth, float* c) {
  for (int64_t k0 = 0; k0 < depth; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, depth - k0);
    for (int64_t jp = 0; jp < BS / NR; ++jp) {
      const float* b = bpack + ((b_row0 / NR + jp) * depth + k0) * NR;
      for (int64_t ip = 0; ip < BS / MR; ++ip)
        micro_kernel_rows(kc, a + ip * MR * lda + k0, lda, b, c + ip * MR * BS + jp * NR, BS, k0 > 0);
    }
  }
}

// C[BS x k_pad] (ldc) (+)= A-packed [BS rows, inner p0..p0+inner) times N-packed rows [p0, +inner)
// (N-packed with rows_pad rows). `a_depth` is the inner size the A panel was packed with. With
// `rows` < BS only the micro-tile rows covering C rows [0, rows) are computed.
static void product_n(const float* apack, int64_t a_depth, int64_t a_p0, const float* npack, int64_t n_rows_pad,
                      int64_t n_p0, int64_t inner, int64_t k_pad, float* c, int64_t ldc, bool accumulate,
                      int64_t rows = BS) {
  const int64_t ip_end = (rows + MR - 1) / MR;
  for (int64_t q0 = 0; q0 < inner; q0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, inner - q0);
    const bool acc = accumulate || q0 > 0;
    for (int64_t kp = 0; kp < k_pad / NR; ++kp) {
      const float* b = npack + (kp * n_rows_pad + n_p0 + q0) * NR;
      for (int64_t ip = 0; ip < ip_end; ++ip) {
        const float* a = apack + (ip * a_depth + a_p0 + q0) * MR;
        micro_kernel(kc, a, b, c + ip * MR * ldc + kp * NR, ldc, acc);
      }
    }
  }
}

// |x|^2 in double: eight independent lanes (vectorised; a single chain would wait on each add's
// latency), added pairwise at the end, then the tail.
static inline double row_sq_norm(const float* x, int64_t k) {
  double acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= k; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(x[i + l]) * x[i + l];
  double s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; i < k; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

static inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Inside a parallel region: this thread's contiguous share [first, second) of `total` items, the
// shares in thread order (the order the per-thread partial sums are added in afterwards).
static inline std::pair<int64_t, int64_t> thread_share(int64_t total) {
#ifdef _OPENMP
  const int count = omp_get_num_threads();
#else
  const int count = 1;
#endif
  const int id = thread_id();
  return {total * id / count, total * (id + 1) / count};
}

}  // namespace MSTEIN_ISA
}  // namespace mstein
