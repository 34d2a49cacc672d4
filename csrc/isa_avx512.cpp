// The fused CPU kernels compiled for one instruction set (flags set in CMakeLists.txt).
#define MSTEIN_ISA avx512
#define MSTEIN_VW 16
#define MSTEIN_MR 8
#define MSTEIN_NV 2
#define MSTEIN_BS 128
#include "kernel_table.h"
#include "gaussian_stack.h"
#include "pairwise_w2.h"
#include "wasserstein_infonce.h"
#include "infonce_rect.h"
#include "dropout.h"
#include "activations.h"
#include "linear.h"
#include "residual_norm.h"
#include "feed_forward.h"
#include "position_dropout.h"
#include "ranks.h"

namespace mstein {
const KernelTable* table_avx512() {
  static const KernelTable table{"avx512", avx512::stack_gaussian, avx512::unstack_gradient, avx512::sqdist_forward, avx512::sqdist_backward, avx512::infonce_forward,
                                 avx512::infonce_backward, avx512::infonce_rect_forward, avx512::infonce_rect_backward,
                                 avx512::dropout, avx512::elu_forward, avx512::elu_backward,
                                 avx512::linear_forward, avx512::linear_backward,
                                 avx512::residual_norm_forward, avx512::residual_norm_backward,
                                 avx512::position_dropout_forward, avx512::position_dropout_backward,
                                 avx512::ff_forward, avx512::ff_backward, avx512::rank_count};
  return &table;
}
}  // namespace mstein
