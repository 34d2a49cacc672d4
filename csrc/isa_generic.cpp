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

// the table of this file's kernels, entry by entry as csrc/kernel_table.h lists them
MSTEIN_KERNEL_TABLE(MSTEIN_ISA)
