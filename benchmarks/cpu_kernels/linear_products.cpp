// The dense-layer kernels of csrc/linear.h (avx512 build) alone, on the encoder's shapes
// ([81999 tokens, k] x [k, n]): forward, forward with ELU fused, input gradient alone, weight
// gradient alone, and the whole fused backward of an ELU layer (g', gx, gW, gb in one sweep); best
// of 9, ms (GFLOP/s of the product where there is one).
// FLUSH=1 evicts the caches (touches 128 MB) before every call, as a training step's other
// activations do; THREADS (default 2). Prints checksums, equal across builds that sum alike.
#include "bench_common.h"
#include "linear.h"

using namespace mstein::avx512;
int main(int argc, char** argv) {
  keep_freed_memory();
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
    std::vector<float> gb(n);
    double best[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    std::vector<float> flush(32 << 20);
    auto evict = [&] { if (flush_on) for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1.f; };
    auto timed = [&](int slot, auto&& call) {
      evict();
      const double t0 = now();
      call();
      best[slot] = std::min(best[slot], now() - t0);
    };
    for (int rep = 0; rep < 9; ++rep) {
      timed(0, [&] { linear_forward(x.data(), w.data(), b.data(), y.data(), t, k, n, 0, threads); });
      timed(1, [&] { linear_forward(x.data(), w.data(), b.data(), y.data(), t, k, n, 1, threads); });
      timed(2, [&] {
        linear_backward(g.data(), nullptr, 0, x.data(), w.data(), gx.data(), nullptr, nullptr, t, k, n, threads);
      });
      timed(3, [&] {
        linear_backward(g.data(), nullptr, 0, x.data(), w.data(), nullptr, gw.data(), nullptr, t, k, n, threads);
      });
      timed(4, [&] {
        linear_backward(g.data(), y.data(), 1, x.data(), w.data(), gx.data(), gw.data(), gb.data(), t, k, n, threads);
      });
    }
    const double fl = 2.0 * t * k * n;
    printf("k %3ld n %3ld: fwd %.2f ms (%.0f)  fwd+elu %.2f ms  in %.2f ms (%.0f)  w %.2f ms (%.0f)  elu bwd all %.2f ms"
           "  chk %g %g %g\n", k, n, best[0] * 1e3, fl / best[0] * 1e-9, best[1] * 1e3, best[2] * 1e3,
           fl / best[2] * 1e-9, best[3] * 1e3, fl / best[3] * 1e-9, best[4] * 1e3, y[12345], gx[777], gw[5]);
  }
}
