// The fused CPU kernels compiled for one instruction set (flags set in CMakeLists.txt).
#define MSTEIN_ISA generic
#define MSTEIN_VW 4
#define MSTEIN_MR 4
#define MSTEIN_NV 4
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
const KernelTable* table_generic() {
  static const KernelTable table{"generic", generic::stack_gaussian, generic::unstack_gradient, generic::sqdist_forward, generic::sqdist_backward, generic::infonce_forward,
                                 generic::infonce_backward, generic::infonce_rect_forward, generic::infonce_rect_backward,
                                 generic::dropout, generic::elu_forward, generic::elu_backward,
                                 generic::linear_forward, generic::linear_backward,
                                 generic::residual_norm_forward, generic::residual_norm_backward,
                                 generic::position_dropout_forward, generic::position_dropout_backward,
                                 generic::ff_forward, generic::ff_backward, generic::rank_count};
  return &table;
}
}  // namespace mstein
