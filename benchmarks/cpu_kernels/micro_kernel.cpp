// The register-blocked micro-kernel of csrc/gemm.h alone, one thread, avx512: GFLOP/s for a
// depth kc and `groups` A panels per B panel (1: everything in L1; 16: the Gram tile's pattern).
// Usage: micro_kernel KC GROUPS REPS; -DMR_=.. -DNV_=.. -DBS_=.. choose the micro-tile.
#include "bench_common.h"
#include "gemm.h"

using namespace mstein::avx512;
int main(int argc, char** argv) {
  int64_t kc = argc > 1 ? atol(argv[1]) : 256;
  int64_t groups = argc > 2 ? atol(argv[2]) : 1;   // number of A groups (ip) per B panel
  int64_t reps = argc > 3 ? atol(argv[3]) : 20000;
  Buffer a(MR * kc * groups), b(NR * kc), c(MR * NR * groups);
  for (int64_t i = 0; i < MR * kc * groups; ++i) a.get()[i] = 1e-3f * (i % 7);
  for (int64_t i = 0; i < NR * kc; ++i) b.get()[i] = 1e-3f * (i % 5);
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < reps; ++r)
    for (int64_t g = 0; g < groups; ++g)
      micro_kernel(kc, a.get() + g * MR * kc, b.get(), c.get() + g * MR * NR, NR, r > 0);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double flops = 2.0 * MR * NR * kc * groups * reps;
  printf("MR=%d NV=%d kc=%ld groups=%ld: %.1f GFLOP/s (c0 %g)\n", MR, NV, kc, groups, flops / s * 1e-9, c.get()[0]);
}
