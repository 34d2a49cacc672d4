// The fused InfoNCE backward of csrc/wasserstein_infonce.h (avx512 build, stored W) at the
// trainer's shape (N = 1024 rows per view, K = 2 x 3200): the whole backward, the packing of x,
// and its products Q_I x alone. Usage: infonce_backward_parts THREADS.
#include "bench_common.h"
#include "wasserstein_infonce.h"

using namespace mstein::avx512;
int main(int argc, char** argv) {
  keep_freed_memory();
  int threads = atoi(argv[1]);
  int64_t n = 1024, k = 6400, rows = 2 * n;
  std::vector<float> x(rows * k), losses(rows), lse(3 * rows), w(rows * rows), g(rows, 1.0f / rows), cov(n * k / 2, 1.0f);
  std::vector<float> gm(n * k / 2), gc(n * k / 2), gm2(n * k / 2), gc2(n * k / 2);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
  infonce_forward(x.data(), n, k, 1e-6f, 0, losses.data(), lse.data(), w.data(), threads);
  for (int rep = 0; rep < 5; ++rep) {
    double t0 = now();
    infonce_backward(x.data(), n, k, 1e-6f, 0, g.data(), lse.data(), w.data(), cov.data(), cov.data(), gm.data(), gc.data(), gm2.data(), gc2.data(), threads);
    double t1 = now();
    int64_t rows_pad = round_up(rows, BS), k_pad = round_up(k, NR);
    Buffer xn(rows_pad * k_pad);
    pack_n(x.data(), rows, k, k, xn.get(), rows_pad);
    double t2 = now();
    int64_t blocks = rows_pad / BS;
#pragma omp parallel num_threads(threads)
    {
      Buffer qpack(BS * rows_pad), acc(BS * k_pad);
      for (int64_t i = 0; i < BS * rows_pad; ++i) qpack.get()[i] = 1e-3f;
#pragma omp for schedule(static)
      for (int64_t ib = 0; ib < blocks; ++ib)
        product_n(qpack.get(), rows_pad, 0, xn.get(), rows_pad, 0, rows_pad, k_pad, acc.get(), k_pad, false);
    }
    double t3 = now();
    double fl = 2.0 * rows_pad * rows_pad * k_pad;
    printf("thr %d: backward %.1f ms; pack_n %.1f ms; products only %.1f ms (%.0f GFLOP/s)\n", threads, (t1-t0)*1e3, (t2-t1)*1e3, (t3-t2)*1e3, fl/(t3-t2)*1e-9);
  }
}
