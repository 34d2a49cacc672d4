// What the C++ microbenchmarks share: the avx512 build of the kernels (micro-tile and block
// overridable with -DMR_=, -DNV_=, -DBS_= before inclusion), the Ctrl-C flag the kernels poll
// (never raised here), a wall clock, and the trainer's malloc behaviour (freed memory kept, so
// repeated calls do not page-fault their buffers anew).
#pragma once
#ifndef MR_
#define MR_ 8
#endif
#ifndef NV_
#define NV_ 2
#endif
#ifndef BS_
#define BS_ 128
#endif
#define MSTEIN_ISA avx512
#define MSTEIN_VW 16
#define MSTEIN_MR MR_
#define MSTEIN_NV NV_
#define MSTEIN_BS BS_
#include "kernel_table.h"
#include "gaussian_stack.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace mstein {
std::atomic<int>& stop_flag() {
  static std::atomic<int> flag{0};
  return flag;
}
}  // namespace mstein

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 2000000000);
}
