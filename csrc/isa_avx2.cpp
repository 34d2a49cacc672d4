// The fused CPU kernels compiled for one instruction set (flags set in CMakeLists.txt).
#define MSTEIN_ISA avx2
#define MSTEIN_VW 8
#define MSTEIN_MR 6
#define MSTEIN_NV 2
#define MSTEIN_BS 96
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
const KernelTable* table_avx2() {
  static const KernelTable table{"avx2", avx2::stack_gaussian, avx2::unstack_gradient, avx2::sqdist_forward, avx2::sqdist_backward, avx2::infonce_forward,
                                 avx2::infonce_backward, avx2::infonce_rect_forward, avx2::infonce_rect_backward,
                                 avx2::dropout, avx2::elu_forward, avx2::elu_backward,
                                 avx2::linear_forward, avx2::linear_backward,
                                 avx2::residual_norm_forward, avx2::residual_norm_backward,
                                 avx2::position_dropout_forward, avx2::position_dropout_backward,
                                 avx2::ff_forward, avx2::ff_backward, avx2::rank_count};
  return &table;
}
}  // namespace mstein
