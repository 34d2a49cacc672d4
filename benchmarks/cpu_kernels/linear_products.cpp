// The dense-layer products of csrc/linear.h (avx512 build) alone, on the encoder's shapes
// ([81999 tokens, k] x [k, n]): forward, input gradient, weight gradient; best of 9, GFLOP/s.
// FLUSH=1 evicts the caches (touches 128 MB) before every call, as a training step's other
// activations do; THREADS (default 2). Prints checksums, equal across builds that sum alike.
#define MSTEIN_ISA avx512
#define MSTEIN_VW 16
#define MSTEIN_MR 8
#define MSTEIN_NV 2
#define MSTEIN_BS 128
#include "kernel_table.h"
#include "gaussian_stack.h"
#include "linear.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <malloc.h>
#include <algorithm>
#include <string>
namespace mstein { std::atomic<int>& stop_flag() { static std::atomic<int> f{0}; return f; } }
using namespace mstein::avx512;
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  mallopt(M_MMAP_MAX, 0); mallopt(M_TRIM_THRESHOLD, 2000000000);
  const int threads = getenv("THREADS") ? atoi(getenv("THREADS")) : 2;
  const bool flush_on = getenv("FLUSH") && std::string(getenv("FLUSH")) == "1";
  int64_t t = 81999;
  int shapes[4][2] = {{64, 256}, {256, 64}, {64, 192}, {64, 64}};
  for (auto& s : shapes) {
    int64_t k = s[0], n = s[1];
    std::vector<float> x(t * k), w(n * k), b(n), y(t * n), g(t * n), gx(t * k), gw(n * k);
    for (size_t i = 0; i < x.size(); ++i) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
    for (size_t i = 0; i < w.size(); ++i) w[i] = (float)((i * 40503u) % 1000) * 1e-3f;
    for (size_t i = 0; i < g.size(); ++i) g[i] = (float)((i * 2246822519u) % 1000) * 1e-3f;
    double best[3] = {1e9, 1e9, 1e9};
    std::vector<float> flush(32 << 20);
    for (int rep = 0; rep < 9; ++rep) {
      if (flush_on) for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
      double t0 = now(); linear_forward(x.data(), w.data(), b.data(), y.data(), t, k, n, threads);
      if (flush_on) for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
      double t1 = now(); linear_backward_input(g.data(), w.data(), gx.data(), t, k, n, threads);
      if (flush_on) for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f;
      double t2 = now(); linear_backward_weight(g.data(), x.data(), gw.data(), t, k, n, threads);
      double t3 = now();
      best[0] = std::min(best[0], t1 - t0); best[1] = std::min(best[1], t2 - t1); best[2] = std::min(best[2], t3 - t2);
    }
    double fl = 2.0 * t * k * n;
    printf("k %3ld n %3ld: fwd %.2f ms (%.0f) in %.2f ms (%.0f) w %.2f ms (%.0f)  chk %g %g %g\n", k, n, best[0]*1e3, fl/best[0]*1e-9, best[1]*1e3, fl/best[1]*1e-9, best[2]*1e3, fl/best[2]*1e-9, y[12345], gx[777], gw[5]);
  }
}
