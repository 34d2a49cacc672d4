// The fused InfoNCE forward of csrc/wasserstein_infonce.h (avx512 build) at the trainer's shape
// (N = 1024 rows per view, K = 2 x 3200): packing, the Gram tiles alone, the whole forward.
// Usage: infonce_forward_parts THREADS. -DBS_=... changes the block size, -DKC_ the pass depth
// (with a copy of csrc whose gemm.h reads KC_).
#include "bench_common.h"
#include "wasserstein_infonce.h"

using namespace mstein::avx512;
int main(int argc, char** argv) {
  keep_freed_memory();
  int threads = atoi(argv[1]);
  int64_t n = 1024, k = 6400;
  std::vector<float> x(2 * n * k), losses(2 * n), lse(6 * n);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
  for (int rep = 0; rep < 6; ++rep) {
    double t0 = now();
    { InfoNCEProblem pb(x.data(), n, k, threads, true); 
      double t1 = now();
      // gram tiles only
      std::vector<float> tile(BS*BS*threads);
#pragma omp parallel for num_threads(threads) schedule(static)
      for (size_t pi = 0; pi < pb.pairs.size(); ++pi) {
        int tid = omp_get_thread_num();
        // A read in place, as the kernel does for whole blocks (2n is a multiple of BS here)
        gram_tile_rows(x.data() + pb.pairs[pi].first * BS * k, k, pb.xb.get(), pb.pairs[pi].second * BS, k,
                       tile.data() + tid * BS * BS);
      }
      double t2 = now();
      infonce_forward(x.data(), n, k, 1e-6f, 0, losses.data(), lse.data(), nullptr, threads);
      double t3 = now();
      double fl = pb.pairs.size() * 2.0 * BS * BS * k;
      printf("BS=%d thr %d: pack %.1f ms, gram-only %.1f ms (%.0f GFLOP/s), full fwd %.1f ms\n", BS, threads, (t1-t0)*1e3, (t2-t1)*1e3, fl/(t2-t1)*1e-9, (t3-t2)*1e3);
    }
  }
}
