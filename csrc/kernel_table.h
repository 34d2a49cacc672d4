// The entry points every instruction-set build of the kernels provides (float32, row-major,
// contiguous buffers passed as raw pointers). module.cpp picks one table at run time.
#pragma once
#include <atomic>
#include <cstdint>

namespace mstein {

// Raised by the module (Ctrl-C during a long call, see module.cpp) to make the long kernels skip
// their remaining tiles; their outputs are then incomplete and the call raises KeyboardInterrupt.
std::atomic<int>& stop_flag();
inline bool stop_requested() { return stop_flag().load(std::memory_order_relaxed) != 0; }

struct KernelTable {
  const char* isa;
  // x [rows, 2d] = [mean ; sqrt(max(cov, 1e-24))] for mean, cov [rows, d].
  void (*stack_gaussian)(const float* mean, const float* cov, int64_t rows, int64_t d, float* x, int threads);
  // g_mean, g_cov [rows, d] from the gradient gx [rows, 2d] w.r.t. the stacked x (and cov).
  void (*unstack_gradient)(const float* gx, const float* cov, int64_t rows, int64_t d, float* g_mean, float* g_cov,
                           int threads);
  // out[b, i, j] = |x_bi - y_bj|^2 for x [B, N, K], y [B, M, K].
  void (*sqdist_forward)(const float* x, const float* y, float* out, int64_t b, int64_t n, int64_t m, int64_t k,
                         int threads);
  // gx = 2 (rowsum(g) x - g y), gy = 2 (colsum(g) y - g^T x), per batch.
  void (*sqdist_backward)(const float* g, const float* x, const float* y, float* gx, float* gy, int64_t b, int64_t n,
                          int64_t m, int64_t k, int threads);
  // InfoNCE over the 2n rows of x [2n, K]: per-row losses, lse[3, 2n] (row max, log-sum relative to
  // it, 1 - softmax(positive)), and, when w is not null, the full 2n x 2n distance matrix for the backward.
  void (*infonce_forward)(const float* x, int64_t n, int64_t k, float temperature, int kind, float* losses,
                          float* lse, float* w, int threads);
  // Gradients of sum_r grad_rows[r] * loss[r] w.r.t. the means and variances of both views
  // ([n, k/2] each); w as saved by the forward, or null; x as stacked from cov_a, cov_b.
  void (*infonce_backward)(const float* x, int64_t n, int64_t k, float temperature, int kind,
                           const float* grad_rows, const float* lse, const float* w, const float* cov_a,
                           const float* cov_b, float* g_mean_a, float* g_cov_a, float* g_mean_b, float* g_cov_b,
                           int threads);
  // Rectangular InfoNCE (csrc/infonce_rect.h): rows [r, k] against the column range cols [c, k];
  // self_col, pos_col [r] (int64, relative to the range, -1 outside it). Updates the float64 running
  // state run_max, run_others [r] (max and sum of exp(logit - max) over the candidates other than
  // the row itself and its positive) and writes pos[i] (the positive's logit) where pos_col[i] >= 0.
  void (*infonce_rect_forward)(const float* rows, const float* cols, int64_t r, int64_t c, int64_t k,
                               const int64_t* self_col, const int64_t* pos_col, float temperature, int kind,
                               double* run_max, double* run_others, double* pos, int threads);
  // Its backward for upstream gradients g [r] and stats [3, r] (top logit, log of the softmax
  // denominator relative to it, 1 - softmax(positive)): g_rows [r, k] += and g_cols [c, k] = the
  // gradients of sum_i g[i] loss_i restricted to this column range.
  void (*infonce_rect_backward)(const float* rows, const float* cols, int64_t r, int64_t c, int64_t k,
                                const int64_t* self_col, const int64_t* pos_col, float temperature, int kind,
                                const float* g, const float* stats, float* g_rows, float* g_cols, int threads);
  // out[i] = x[i] * scale where hash(seed, i) >= threshold, else 0 (counter-based dropout mask).
  void (*dropout)(const float* x, float* out, int64_t n, uint32_t threshold, float scale, uint64_t seed, int threads);
  // out = elu(x), or max(elu(x) + 1, 1e-24) when plus_one (x, out: [n], may alias).
  void (*elu_forward)(const float* x, float* out, int64_t n, int plus_one, int threads);
  // grad_in = grad * d act / dx, from the forward's output y (grad_in may alias grad).
  void (*elu_backward)(const float* grad, const float* y, float* grad_in, int64_t n, int plus_one, int threads);
  // Dense layer (csrc/linear.h): y [t, n] = act(x [t, k] W^T (+ b, may be null)); act 0 none, 1 ELU, 2 ELU + 1.
  void (*linear_forward)(const float* x, const float* w, const float* b, float* y, int64_t t, int64_t k, int64_t n,
                         int act, int threads);
  // From g = dL/dy and (act != 0) y: gx [t, k] = g' W, gW [n, k] = g'^T x, gb [n] = colsum(g') with
  // g' = g * act'(y); gx, gw, gb may each be null (not computed).
  void (*linear_backward)(const float* g, const float* y, int act, const float* x, const float* w, float* gx,
                          float* gw, float* gb, int64_t t, int64_t k, int64_t n, int threads);
  // Sub-layer end (csrc/residual_norm.h): y = act(LayerNorm(dropout(z) + x) * gamma + beta) for z, x
  // [rows, h] (act 0 none, 2 ELU + 1; threshold 0: no dropout); also writes xhat [rows, h] and rstd [rows].
  void (*residual_norm_forward)(const float* z, const float* x, const float* gamma, const float* beta, int64_t rows,
                                int64_t h, uint32_t threshold, float scale, uint64_t seed, float eps, int act, float* y,
                                float* xhat, float* rstd, int threads);
  // Its backward from gy (and y when act != 0): gz, gx [rows, h], ggamma, gbeta [h]; each may be null.
  void (*residual_norm_backward)(const float* gy, const float* y, int act, const float* xhat, const float* rstd,
                                 const float* gamma, int64_t rows, int64_t h, uint32_t threshold, float scale,
                                 uint64_t seed, float* gz, float* gx, float* ggamma, float* gbeta, int threads);
  // Gathered rows (csrc/position_dropout.h): y [tokens, h] = act(dropout(table[pos[t]])) for table [p, h],
  // pos [tokens] (int64; act 0 none, 1 ELU, 2 ELU + 1; threshold 0: no dropout), and its backward
  // gtable [p, h] from g and y.
  void (*position_dropout_forward)(const float* table, const int64_t* pos, int64_t tokens, int64_t h,
                                   uint32_t threshold, float scale, uint64_t seed, int act, float* y, int threads);
  void (*position_dropout_backward)(const float* g, const float* y, const int64_t* pos, int64_t tokens, int64_t h,
                                    int64_t p, uint32_t threshold, float scale, uint64_t seed, int act, float* gtable,
                                    int threads);
  // Feed-forward product (csrc/feed_forward.h): z [t, m] = act(x [t, k] W1^T + b1) W2^T + b2 for W1 [n, k],
  // W2 [m, n] (biases may be null), the hidden layer kept in cache.
  void (*ff_forward)(const float* x, const float* w1, const float* b1, const float* w2, const float* b2, float* z,
                     int64_t t, int64_t k, int64_t n, int64_t m, int act, int threads);
  // Its backward from g [t, m] (the hidden layer recomputed): gx, gW1, gb1, gW2, gb2; each may be null.
  void (*ff_backward)(const float* g, const float* x, const float* w1, const float* b1, const float* w2, float* gx,
                      float* gw1, float* gb1, float* gw2, float* gb2, int64_t t, int64_t k, int64_t n, int64_t m,
                      int act, int threads);
  // Evaluation (csrc/ranks.h): ranks [b] of each row's target column cols [b] among scores [b, n] with
  // the items excluded [b, n] (bytes, nonzero = excluded) scored -inf; finite [b]: every raw score finite.
  void (*rank_count)(const float* scores, const uint8_t* excluded, const int64_t* cols, int64_t b, int64_t n,
                     int64_t* ranks, uint8_t* finite, int threads);
};

}  // namespace mstein

// The entries of a KernelTable after `isa`, in declaration order: every instruction set's table
// (csrc/isa_*.cpp) is written from this one list, MSTEIN_KERNEL_TABLE(isa namespace).
#define MSTEIN_KERNEL_ENTRIES(X)                                                                           \
  X(stack_gaussian) X(unstack_gradient) X(sqdist_forward) X(sqdist_backward) X(infonce_forward)             \
  X(infonce_backward) X(infonce_rect_forward) X(infonce_rect_backward) X(dropout) X(elu_forward)          \
  X(elu_backward) X(linear_forward) X(linear_backward) X(residual_norm_forward) X(residual_norm_backward)  \
  X(position_dropout_forward) X(position_dropout_backward) X(ff_forward) X(ff_backward) X(rank_count)
#define MSTEIN_STR2(x) #x
#define MSTEIN_STR(x) MSTEIN_STR2(x)
#define MSTEIN_TABLE_ENTRY(name) MSTEIN_ISA::name,
// Defines mstein::table_<MSTEIN_ISA>() returning the table of the kernels compiled in this file.
#define MSTEIN_KERNEL_TABLE_2(isa_name)                                                                     \
  namespace mstein {                                                                                       \
  const KernelTable* table_##isa_name() {                                                                  \
    static const KernelTable table{MSTEIN_STR(isa_name), MSTEIN_KERNEL_ENTRIES(MSTEIN_TABLE_ENTRY)};       \
    return &table;                                                                                         \
  }                                                                                                        \
  }
#define MSTEIN_KERNEL_TABLE(isa_name) MSTEIN_KERNEL_TABLE_2(isa_name)

#define MSTEIN_DECLARE_TABLE(isa_name) \
  namespace mstein {                   \
  const KernelTable* table_##isa_name();  \
  }
MSTEIN_DECLARE_TABLE(avx512)
MSTEIN_DECLARE_TABLE(avx2)
MSTEIN_DECLARE_TABLE(generic)
