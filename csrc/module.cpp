// Python bindings of the fused CPU kernels (module mstein_fast._C).
//
// Tensors cross as raw data pointers (integers) of contiguous float32 buffers (the rectangular
// InfoNCE also takes int64 column indices and float64 running sums) that the Python wrappers
// allocate and validate (mstein_fast/ops/_library.py checks each buffer's dtype, device,
// contiguity and shape against the sizes passed here; no libtorch link, so one build serves every
// torch version). Here the sizes themselves are checked: non-negative, element counts that fit in
// int64, non-null and aligned pointers wherever elements are read or written, and the values of
// the column indices the rectangular InfoNCE writes through. The entry points carry the names of
// the torch ops they implement (mstein_fast::pairwise_w2_fwd, ...; wasserstein_infonce_rect_* are
// plain functions, mstein_fast/ops/_wasserstein_infonce/rect.py, used by the distributed loss);
// the GIL is released while a kernel runs, and long InfoNCE calls stop on Ctrl-C (run_kernel). The instruction set
// is chosen once at import: AVX-512 > AVX2 > portable, overridable with MSTEIN_FAST_ISA.
#include <pybind11/pybind11.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "kernel_table.h"
#include "op_codes.h"

namespace py = pybind11;
using mstein::KernelTable;
using mstein::ACT_ELU;
using mstein::ACT_ELU_PLUS_ONE;
using mstein::ACT_NONE;
using mstein::SIM_INV;
using mstein::SIM_NEG;

std::atomic<int>& mstein::stop_flag() {
  static std::atomic<int> flag{0};
  return flag;
}

namespace {

// Calls of at least this many multiply-adds (about a second here) can be interrupted with Ctrl-C.
constexpr double INTERRUPTIBLE_WORK = 1e11;

// Run the kernel call ``f`` without the GIL. A long call runs on a worker thread while this
// (Python's main) thread wakes every 50 ms to let Python see signals: on Ctrl-C the kernels are
// told to skip their remaining tiles and the call raises KeyboardInterrupt once they have stopped.
template <class F>
void run_kernel(double work, F&& f) {
  if (work < INTERRUPTIBLE_WORK) {
    py::gil_scoped_release nogil;
    f();
    return;
  }
  std::exception_ptr error;
  bool interrupted = false;
  {
    py::gil_scoped_release nogil;
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    mstein::stop_flag().store(0);
    std::thread worker([&] {
      try {
        f();
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(m);
      done = true;
      cv.notify_one();
    });
    {
      std::unique_lock<std::mutex> lock(m);
      while (!cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return done; })) {
        if (interrupted) continue;
        lock.unlock();
        {
          py::gil_scoped_acquire gil;
          if (PyErr_CheckSignals() != 0) interrupted = true;  // the KeyboardInterrupt stays pending
        }
        if (interrupted) mstein::stop_flag().store(1);
        lock.lock();
      }
    }
    worker.join();
    mstein::stop_flag().store(0);
  }
  if (interrupted) throw py::error_already_set();
  if (error) std::rethrow_exception(error);
}

bool isa_supported(const std::string& name) {
#if defined(MSTEIN_X86)
  __builtin_cpu_init();
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return name == "generic";
}

const KernelTable* by_name(const std::string& name) {
#if defined(MSTEIN_X86)
  if (name == "avx512") return mstein::table_avx512();
  if (name == "avx2") return mstein::table_avx2();
#endif
  if (name == "generic") return mstein::table_generic();
  return nullptr;
}

const KernelTable* select_table() {
  if (const char* forced = std::getenv("MSTEIN_FAST_ISA")) {
    const std::string name(forced);
    if (!by_name(name) || !isa_supported(name))
      throw std::runtime_error("MSTEIN_FAST_ISA=" + name + " is not available on this CPU/build");
    return by_name(name);
  }
  for (const char* name : {"avx512", "avx2", "generic"})
    if (by_name(name) && isa_supported(name)) return by_name(name);
  return mstein::table_generic();
}

const KernelTable* table() {
  static const KernelTable* t = select_table();
  return t;
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be >= 1");
}

// Product of the sizes (each >= 0), or throw naming the buffer if one is negative or it overflows.
int64_t count(const char* name, std::initializer_list<int64_t> sizes) {
  int64_t total = 1;
  for (int64_t s : sizes) {
    if (s < 0) throw std::invalid_argument(std::string(name) + ": negative size " + std::to_string(s));
    if (__builtin_mul_overflow(total, s, &total))
      throw std::invalid_argument(std::string(name) + ": element count overflows int64");
  }
  return total;
}

// A float buffer of `n` elements: non-null (unless empty) and aligned.
void check_pointer(const char* name, uintptr_t p, int64_t n) {
  if (n > 0 && p == 0) throw std::invalid_argument(std::string(name) + ": null pointer for a non-empty buffer");
  if (p % alignof(float) != 0) throw std::invalid_argument(std::string(name) + ": pointer not aligned to float");
}

// The dense layer's activation code (csrc/linear.h).
void check_activation(int act) {
  if (act != ACT_NONE && act != ACT_ELU && act != ACT_ELU_PLUS_ONE)
    throw std::invalid_argument("act must be 0 (none), 1 (ELU) or 2 (ELU + 1), got " + std::to_string(act));
}

// The sub-layer end's activation (none or ELU + 1), row width and LayerNorm epsilon (csrc/residual_norm.h).
void check_norm_args(int act, int64_t h, float eps) {
  if (act != ACT_NONE && act != ACT_ELU_PLUS_ONE)
    throw std::invalid_argument("act must be 0 (none) or 2 (ELU + 1), got " + std::to_string(act));
  if (h < 1) throw std::invalid_argument("h (features per row) must be >= 1, got " + std::to_string(h));
  if (!(eps >= 0.f) || !std::isfinite(eps))
    throw std::invalid_argument("eps must be a finite float32 >= 0, got " + std::to_string(eps));
}

void check_buffer(const char* name, uintptr_t p, std::initializer_list<int64_t> sizes) {
  check_pointer(name, p, count(name, sizes));
}

// The same for a buffer of another element type (int64 indices, float64 running sums).
template <typename T>
void check_typed_buffer(const char* name, uintptr_t p, std::initializer_list<int64_t> sizes) {
  if (count(name, sizes) > 0 && p == 0)
    throw std::invalid_argument(std::string(name) + ": null pointer for a non-empty buffer");
  if (p % alignof(T) != 0) throw std::invalid_argument(std::string(name) + ": pointer not aligned to its type");
}

// The arguments both position_dropout calls share: the table (or its gradient) [p, h], the activation,
// and the positions, read here: each must lie in [0, p) (the kernels read and write through them).
void check_position_dropout(uintptr_t table, uintptr_t pos, int64_t tokens, int64_t h, int64_t p, int act,
                            int threads) {
  check_threads(threads);
  check_activation(act);
  check_buffer("table", table, {p, h});
  check_typed_buffer<int64_t>("pos", pos, {tokens});
  const int64_t* q = ptr<const int64_t>(pos);
  for (int64_t t = 0; t < tokens; ++t)
    if (q[t] < 0 || q[t] >= p)
      throw std::invalid_argument("pos[" + std::to_string(t) + "] = " + std::to_string(q[t]) + " is outside [0, " +
                                  std::to_string(p) + ")");
}

// The arguments both rectangular InfoNCE calls share: sizes, the similarity, the temperature, and
// the per-row column indices, read here: each must be -1 or lie in [0, c), and a row's own column
// cannot be its positive's (the kernels write through these indices).
void check_rect(uintptr_t rows, uintptr_t cols, int64_t r, int64_t c, int64_t k, uintptr_t self_col,
                uintptr_t pos_col, float temperature, int kind, int threads) {
  check_threads(threads);
  if (kind != SIM_INV && kind != SIM_NEG) throw std::invalid_argument("kind must be 0 (inv) or 1 (neg)");
  if (!(temperature > 0.f) || !std::isfinite(temperature))
    throw std::invalid_argument("temperature must be a positive finite float32, got " + std::to_string(temperature));
  check_buffer("rows", rows, {r, k});
  check_buffer("cols", cols, {c, k});
  check_typed_buffer<int64_t>("self_col", self_col, {r});
  check_typed_buffer<int64_t>("pos_col", pos_col, {r});
  const int64_t* sc = ptr<const int64_t>(self_col);
  const int64_t* pc = ptr<const int64_t>(pos_col);
  for (int64_t i = 0; i < r; ++i) {
    for (const auto& [name, v] : {std::pair<const char*, int64_t>{"self_col", sc[i]}, {"pos_col", pc[i]}})
      if (v < -1 || v >= c)
        throw std::invalid_argument(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(v) +
                                    " is neither -1 nor a column of the range [0, " + std::to_string(c) + ")");
    if (sc[i] >= 0 && sc[i] == pc[i])
      throw std::invalid_argument("self_col[" + std::to_string(i) + "] == pos_col[" + std::to_string(i) +
                                  "] = " + std::to_string(sc[i]) + ": a row cannot be its own positive");
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mstein-fast fused CPU kernels (float32, raw pointers; use the mstein_fast Python API)";
  m.def("isa", [] { return std::string(table()->isa); }, "Instruction set the kernels were compiled for and run with.");
  // the option codes of csrc/op_codes.h, for the test that they are mstein_fast.numerics's
  pybind11::dict similarity, activation;
  similarity["inv"] = int(SIM_INV);
  similarity["neg"] = int(SIM_NEG);
  activation[pybind11::none()] = int(ACT_NONE);
  activation["elu"] = int(ACT_ELU);
  activation["elu_plus_one"] = int(ACT_ELU_PLUS_ONE);
  m.attr("SIMILARITY_CODES") = similarity;
  m.attr("ACTIVATION_CODES") = activation;
  m.def(
      "stack_gaussian",
      [](uintptr_t mean, uintptr_t cov, int64_t rows, int64_t d, uintptr_t x, int threads) {
        check_threads(threads);
        check_buffer("mean", mean, {rows, d});
        check_buffer("cov", cov, {rows, d});
        check_buffer("x", x, {rows, 2, d});
        py::gil_scoped_release nogil;
        table()->stack_gaussian(ptr<const float>(mean), ptr<const float>(cov), rows, d, ptr<float>(x), threads);
      },
      py::arg("mean"), py::arg("cov"), py::arg("rows"), py::arg("d"), py::arg("x"), py::arg("threads"),
      "x [rows, 2d] = [mean ; sqrt(max(cov, 1e-24))].");
  m.def(
      "unstack_gradient",
      [](uintptr_t gx, uintptr_t cov, int64_t rows, int64_t d, uintptr_t g_mean, uintptr_t g_cov, int threads) {
        check_threads(threads);
        check_buffer("gx", gx, {rows, 2, d});
        check_buffer("cov", cov, {rows, d});
        check_buffer("g_mean", g_mean, {rows, d});
        check_buffer("g_cov", g_cov, {rows, d});
        py::gil_scoped_release nogil;
        table()->unstack_gradient(ptr<const float>(gx), ptr<const float>(cov), rows, d, ptr<float>(g_mean),
                                  ptr<float>(g_cov), threads);
      },
      py::arg("gx"), py::arg("cov"), py::arg("rows"), py::arg("d"), py::arg("g_mean"), py::arg("g_cov"),
      py::arg("threads"), "Gradients w.r.t. mean and cov from the gradient w.r.t. the stacked x.");
  m.def(
      "pairwise_w2_fwd",
      [](uintptr_t x, uintptr_t y, uintptr_t out, int64_t b, int64_t n, int64_t mm, int64_t k, int threads) {
        check_threads(threads);
        check_buffer("x", x, {b, n, k});
        check_buffer("y", y, {b, mm, k});
        check_buffer("out", out, {b, n, mm});
        py::gil_scoped_release nogil;
        table()->sqdist_forward(ptr<const float>(x), ptr<const float>(y), ptr<float>(out), b, n, mm, k, threads);
      },
      py::arg("x"), py::arg("y"), py::arg("out"), py::arg("b"), py::arg("n"), py::arg("m"), py::arg("k"),
      py::arg("threads"), "out[b,i,j] = |x[b,i]-y[b,j]|^2 for x [b,n,k], y [b,m,k] (float32, contiguous).");
  m.def(
      "pairwise_w2_bwd",
      [](uintptr_t g, uintptr_t x, uintptr_t y, uintptr_t gx, uintptr_t gy, int64_t b, int64_t n, int64_t mm,
         int64_t k, int threads) {
        check_threads(threads);
        check_buffer("g", g, {b, n, mm});
        check_buffer("x", x, {b, n, k});
        check_buffer("gx", gx, {b, n, k});
        check_buffer("y", y, {b, mm, k});
        check_buffer("gy", gy, {b, mm, k});
        py::gil_scoped_release nogil;
        table()->sqdist_backward(ptr<const float>(g), ptr<const float>(x), ptr<const float>(y), ptr<float>(gx),
                                 ptr<float>(gy), b, n, mm, k, threads);
      },
      py::arg("g"), py::arg("x"), py::arg("y"), py::arg("gx"), py::arg("gy"), py::arg("b"), py::arg("n"),
      py::arg("m"), py::arg("k"), py::arg("threads"), "Gradients of sqdist_forward for upstream gradient g [b,n,m].");
  m.def(
      "wasserstein_infonce_fwd",
      [](uintptr_t x, int64_t n, int64_t k, float temperature, int kind, uintptr_t losses, uintptr_t lse, uintptr_t w,
         int threads) {
        check_threads(threads);
        if (kind != SIM_INV && kind != SIM_NEG) throw std::invalid_argument("kind must be 0 (inv) or 1 (neg)");
        check_buffer("x", x, {2, n, k});
        check_buffer("losses", losses, {2, n});
        check_buffer("lse", lse, {3, 2, n});
        if (w) check_buffer("w", w, {2, n, 2, n});
        run_kernel(4.0 * n * n * k, [&] {
          table()->infonce_forward(ptr<const float>(x), n, k, temperature, kind, ptr<float>(losses),
                                   ptr<float>(lse), w ? ptr<float>(w) : nullptr, threads);
        });
      },
      py::arg("x"), py::arg("n"), py::arg("k"), py::arg("temperature"), py::arg("kind"), py::arg("losses"),
      py::arg("lse"), py::arg("w"), py::arg("threads"),
      "Per-row InfoNCE losses of x [2n,k]; lse [3,2n] (max, log-sum, 1 - softmax(positive)); w [2n,2n] stored when non-zero.");
  m.def(
      "wasserstein_infonce_bwd",
      [](uintptr_t x, int64_t n, int64_t k, float temperature, int kind, uintptr_t grad_rows, uintptr_t lse,
         uintptr_t w, uintptr_t cov_a, uintptr_t cov_b, uintptr_t g_mean_a, uintptr_t g_cov_a, uintptr_t g_mean_b,
         uintptr_t g_cov_b, int threads) {
        check_threads(threads);
        if (kind != SIM_INV && kind != SIM_NEG) throw std::invalid_argument("kind must be 0 (inv) or 1 (neg)");
        if (k % 2 != 0) throw std::invalid_argument("k must be even (x = [mean ; sqrt(cov)])");
        check_buffer("x", x, {2, n, k});
        check_buffer("grad_rows", grad_rows, {2, n});
        check_buffer("lse", lse, {3, 2, n});
        if (w) check_buffer("w", w, {2, n, 2, n});
        const int64_t d = k / 2;
        check_buffer("cov_a", cov_a, {n, d});
        check_buffer("cov_b", cov_b, {n, d});
        check_buffer("g_mean_a", g_mean_a, {n, d});
        check_buffer("g_cov_a", g_cov_a, {n, d});
        check_buffer("g_mean_b", g_mean_b, {n, d});
        check_buffer("g_cov_b", g_cov_b, {n, d});
        run_kernel(4.0 * n * n * k, [&] {
          table()->infonce_backward(ptr<const float>(x), n, k, temperature, kind, ptr<const float>(grad_rows),
                                    ptr<const float>(lse), w ? ptr<const float>(w) : nullptr,
                                    ptr<const float>(cov_a), ptr<const float>(cov_b), ptr<float>(g_mean_a),
                                    ptr<float>(g_cov_a), ptr<float>(g_mean_b), ptr<float>(g_cov_b), threads);
        });
      },
      py::arg("x"), py::arg("n"), py::arg("k"), py::arg("temperature"), py::arg("kind"), py::arg("grad_rows"),
      py::arg("lse"), py::arg("w"), py::arg("cov_a"), py::arg("cov_b"), py::arg("g_mean_a"), py::arg("g_cov_a"),
      py::arg("g_mean_b"), py::arg("g_cov_b"), py::arg("threads"),
      "Gradients of sum(grad_rows * losses) w.r.t. mean and cov of both views.");
  m.def(
      "wasserstein_infonce_rect_fwd",
      [](uintptr_t rows, uintptr_t cols, int64_t r, int64_t c, int64_t k, uintptr_t self_col, uintptr_t pos_col,
         float temperature, int kind, uintptr_t run_max, uintptr_t run_others, uintptr_t pos, int threads) {
        check_rect(rows, cols, r, c, k, self_col, pos_col, temperature, kind, threads);
        check_typed_buffer<double>("run_max", run_max, {r});
        check_typed_buffer<double>("run_others", run_others, {r});
        check_typed_buffer<double>("pos", pos, {r});
        run_kernel(2.0 * r * c * k, [&] {
          table()->infonce_rect_forward(ptr<const float>(rows), ptr<const float>(cols), r, c, k,
                                        ptr<const int64_t>(self_col), ptr<const int64_t>(pos_col), temperature, kind,
                                        ptr<double>(run_max), ptr<double>(run_others), ptr<double>(pos), threads);
        });
      },
      py::arg("rows"), py::arg("cols"), py::arg("r"), py::arg("c"), py::arg("k"), py::arg("self_col"),
      py::arg("pos_col"), py::arg("temperature"), py::arg("kind"), py::arg("run_max"), py::arg("run_others"),
      py::arg("pos"), py::arg("threads"),
      "InfoNCE of rows [r,k] against the column range cols [c,k]: updates the float64 running state run_max, "
      "run_others [r] (other candidates: not self_col, not pos_col) and writes pos[i] where pos_col[i] >= 0.");
  m.def(
      "wasserstein_infonce_rect_bwd",
      [](uintptr_t rows, uintptr_t cols, int64_t r, int64_t c, int64_t k, uintptr_t self_col, uintptr_t pos_col,
         float temperature, int kind, uintptr_t g, uintptr_t stats, uintptr_t g_rows, uintptr_t g_cols, int threads) {
        check_rect(rows, cols, r, c, k, self_col, pos_col, temperature, kind, threads);
        check_buffer("g", g, {r});
        check_buffer("stats", stats, {3, r});
        check_buffer("g_rows", g_rows, {r, k});
        check_buffer("g_cols", g_cols, {c, k});
        run_kernel(6.0 * r * c * k, [&] {
          table()->infonce_rect_backward(ptr<const float>(rows), ptr<const float>(cols), r, c, k,
                                         ptr<const int64_t>(self_col), ptr<const int64_t>(pos_col), temperature, kind,
                                         ptr<const float>(g), ptr<const float>(stats), ptr<float>(g_rows),
                                         ptr<float>(g_cols), threads);
        });
      },
      py::arg("rows"), py::arg("cols"), py::arg("r"), py::arg("c"), py::arg("k"), py::arg("self_col"),
      py::arg("pos_col"), py::arg("temperature"), py::arg("kind"), py::arg("g"), py::arg("stats"), py::arg("g_rows"),
      py::arg("g_cols"), py::arg("threads"),
      "Backward of wasserstein_infonce_rect_fwd for upstream g [r] and stats [3,r] (top logit, log-sum relative "
      "to it, 1 - softmax(positive)): g_rows [r,k] += and g_cols [c,k] = the gradients over this column range.");
  m.def(
      "dropout",
      [](uintptr_t x, uintptr_t out, int64_t n, uint32_t threshold, float scale, uint64_t seed, int threads) {
        check_threads(threads);
        check_buffer("x", x, {n});
        check_buffer("out", out, {n});
        py::gil_scoped_release nogil;
        table()->dropout(ptr<const float>(x), ptr<float>(out), n, threshold, scale, seed, threads);
      },
      py::arg("x"), py::arg("out"), py::arg("n"), py::arg("threshold"), py::arg("scale"), py::arg("seed"),
      py::arg("threads"), "out[i] = x[i] * scale if hash(seed, i) >= threshold else 0 (x, out: float32 [n]).");
  m.def(
      "elu_fwd",
      [](uintptr_t x, uintptr_t out, int64_t n, bool plus_one, int threads) {
        check_threads(threads);
        check_buffer("x", x, {n});
        check_buffer("out", out, {n});
        py::gil_scoped_release nogil;
        table()->elu_forward(ptr<const float>(x), ptr<float>(out), n, plus_one ? 1 : 0, threads);
      },
      py::arg("x"), py::arg("out"), py::arg("n"), py::arg("plus_one"), py::arg("threads"),
      "out = elu(x), or max(elu(x) + 1, 1e-24) with plus_one (x, out: float32 [n], may alias).");
  m.def(
      "elu_bwd",
      [](uintptr_t grad, uintptr_t y, uintptr_t grad_in, int64_t n, bool plus_one, int threads) {
        check_threads(threads);
        check_buffer("grad", grad, {n});
        check_buffer("y", y, {n});
        check_buffer("grad_in", grad_in, {n});
        py::gil_scoped_release nogil;
        table()->elu_backward(ptr<const float>(grad), ptr<const float>(y), ptr<float>(grad_in), n, plus_one ? 1 : 0,
                              threads);
      },
      py::arg("grad"), py::arg("y"), py::arg("grad_in"), py::arg("n"), py::arg("plus_one"), py::arg("threads"),
      "grad_in = grad * (elu or elu + 1)'(x), from the forward's output y (float32 [n]; grad_in may alias grad).");
  m.def(
      "linear_fwd",
      [](uintptr_t x, uintptr_t w, uintptr_t b, uintptr_t y, int64_t t, int64_t k, int64_t n, int act, int threads) {
        check_threads(threads);
        check_activation(act);
        check_buffer("x", x, {t, k});
        check_buffer("w", w, {n, k});
        if (b != 0) check_buffer("b", b, {n});
        check_buffer("y", y, {t, n});
        py::gil_scoped_release nogil;
        table()->linear_forward(ptr<const float>(x), ptr<const float>(w), b ? ptr<const float>(b) : nullptr,
                                ptr<float>(y), t, k, n, act, threads);
      },
      py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("t"), py::arg("k"), py::arg("n"), py::arg("act"),
      py::arg("threads"),
      "y [t, n] = act(x [t, k] w^T + b) (w [n, k]; b [n], or 0 for none; act 0 none, 1 ELU, 2 ELU + 1 floored at "
      "1e-24; float32).");
  m.def(
      "linear_bwd",
      [](uintptr_t g, uintptr_t y, int act, uintptr_t x, uintptr_t w, uintptr_t gx, uintptr_t gw, uintptr_t gb,
         int64_t t, int64_t k, int64_t n, int threads) {
        check_threads(threads);
        check_activation(act);
        check_buffer("g", g, {t, n});
        if (act != 0) check_buffer("y", y, {t, n});
        if (gx != 0) check_buffer("w", w, {n, k});
        if (gw != 0) check_buffer("x", x, {t, k});
        if (gx != 0) check_buffer("gx", gx, {t, k});
        if (gw != 0) check_buffer("gw", gw, {n, k});
        if (gb != 0) check_buffer("gb", gb, {n});
        py::gil_scoped_release nogil;
        table()->linear_backward(ptr<const float>(g), act ? ptr<const float>(y) : nullptr, act, ptr<const float>(x),
                                 ptr<const float>(w), gx ? ptr<float>(gx) : nullptr, gw ? ptr<float>(gw) : nullptr,
                                 gb ? ptr<float>(gb) : nullptr, t, k, n, threads);
      },
      py::arg("g"), py::arg("y"), py::arg("act"), py::arg("x"), py::arg("w"), py::arg("gx"), py::arg("gw"),
      py::arg("gb"), py::arg("t"), py::arg("k"), py::arg("n"), py::arg("threads"),
      "From g = dL/dy [t, n] and, with act, the forward's output y: gx [t, k] = g' w, gw [n, k] = g'^T x, gb [n] = "
      "column sums of g', where g' = g * act'(y); gx, gw, gb: 0 to skip (float32; the thread count fixes the order of "
      "the sums).");
  m.def(
      "position_dropout_fwd",
      [](uintptr_t tab, uintptr_t pos, int64_t tokens, int64_t h, int64_t p, uint32_t threshold, float scale,
         uint64_t seed, int act, uintptr_t y, int threads) {
        check_position_dropout(tab, pos, tokens, h, p, act, threads);
        check_buffer("y", y, {tokens, h});
        py::gil_scoped_release nogil;
        table()->position_dropout_forward(ptr<const float>(tab), ptr<const int64_t>(pos), tokens, h, threshold, scale,
                                          seed, act, ptr<float>(y), threads);
      },
      py::arg("table"), py::arg("pos"), py::arg("tokens"), py::arg("h"), py::arg("p"), py::arg("threshold"),
      py::arg("scale"), py::arg("seed"), py::arg("act"), py::arg("y"), py::arg("threads"),
      "y [tokens, h] = act(dropout(table[pos[t]])) for table [p, h] and int64 pos [tokens] in [0, p) (act 0 none, "
      "1 ELU, 2 ELU + 1; the dropout mask of element t * h + c, threshold 0: none; float32).");
  m.def(
      "position_dropout_bwd",
      [](uintptr_t g, uintptr_t y, uintptr_t pos, int64_t tokens, int64_t h, int64_t p, uint32_t threshold,
         float scale, uint64_t seed, int act, uintptr_t gtable, int threads) {
        check_position_dropout(gtable, pos, tokens, h, p, act, threads);
        check_buffer("g", g, {tokens, h});
        check_buffer("y", y, {tokens, h});
        py::gil_scoped_release nogil;
        table()->position_dropout_backward(ptr<const float>(g), ptr<const float>(y), ptr<const int64_t>(pos), tokens,
                                           h, p, threshold, scale, seed, act, ptr<float>(gtable), threads);
      },
      py::arg("g"), py::arg("y"), py::arg("pos"), py::arg("tokens"), py::arg("h"), py::arg("p"), py::arg("threshold"),
      py::arg("scale"), py::arg("seed"), py::arg("act"), py::arg("gtable"), py::arg("threads"),
      "Backward of position_dropout_fwd from g [tokens, h] and its output y: gtable [p, h] (float32; the sums "
      "per thread in token order, then over threads in order).");
  m.def(
      "residual_norm_fwd",
      [](uintptr_t z, uintptr_t x, uintptr_t gamma, uintptr_t beta, int64_t rows, int64_t h, uint32_t threshold,
         float scale, uint64_t seed, float eps, int act, uintptr_t y, uintptr_t xhat, uintptr_t rstd, int threads) {
        check_threads(threads);
        check_norm_args(act, h, eps);
        for (const auto& [name, p] : {std::pair<const char*, uintptr_t>{"z", z}, {"x", x}, {"y", y}, {"xhat", xhat}})
          check_buffer(name, p, {rows, h});
        check_buffer("gamma", gamma, {h});
        check_buffer("beta", beta, {h});
        check_buffer("rstd", rstd, {rows});
        py::gil_scoped_release nogil;
        table()->residual_norm_forward(ptr<const float>(z), ptr<const float>(x), ptr<const float>(gamma),
                                       ptr<const float>(beta), rows, h, threshold, scale, seed, eps, act, ptr<float>(y),
                                       ptr<float>(xhat), ptr<float>(rstd), threads);
      },
      py::arg("z"), py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("rows"), py::arg("h"),
      py::arg("threshold"), py::arg("scale"), py::arg("seed"), py::arg("eps"), py::arg("act"), py::arg("y"),
      py::arg("xhat"), py::arg("rstd"), py::arg("threads"),
      "y = act(LayerNorm(dropout(z) + x) * gamma + beta) for z, x [rows, h] (dropout: the mask of the dropout "
      "kernel for seed, threshold 0 for none; act 0 none, 2 ELU + 1 floored at 1e-24); also xhat [rows, h] (the "
      "normalised rows) and rstd [rows] for the backward (float32).");
  m.def(
      "residual_norm_bwd",
      [](uintptr_t gy, uintptr_t y, int act, uintptr_t xhat, uintptr_t rstd, uintptr_t gamma, int64_t rows, int64_t h,
         uint32_t threshold, float scale, uint64_t seed, uintptr_t gz, uintptr_t gx, uintptr_t ggamma, uintptr_t gbeta,
         int threads) {
        check_threads(threads);
        check_norm_args(act, h, 1.f);
        check_buffer("gy", gy, {rows, h});
        if (act != 0) check_buffer("y", y, {rows, h});
        check_buffer("xhat", xhat, {rows, h});
        check_buffer("rstd", rstd, {rows});
        check_buffer("gamma", gamma, {h});
        if (gz != 0) check_buffer("gz", gz, {rows, h});
        if (gx != 0) check_buffer("gx", gx, {rows, h});
        if (ggamma != 0) check_buffer("ggamma", ggamma, {h});
        if (gbeta != 0) check_buffer("gbeta", gbeta, {h});
        py::gil_scoped_release nogil;
        table()->residual_norm_backward(ptr<const float>(gy), act ? ptr<const float>(y) : nullptr, act,
                                        ptr<const float>(xhat), ptr<const float>(rstd), ptr<const float>(gamma), rows,
                                        h, threshold, scale, seed, gz ? ptr<float>(gz) : nullptr,
                                        gx ? ptr<float>(gx) : nullptr, ggamma ? ptr<float>(ggamma) : nullptr,
                                        gbeta ? ptr<float>(gbeta) : nullptr, threads);
      },
      py::arg("gy"), py::arg("y"), py::arg("act"), py::arg("xhat"), py::arg("rstd"), py::arg("gamma"), py::arg("rows"),
      py::arg("h"), py::arg("threshold"), py::arg("scale"), py::arg("seed"), py::arg("gz"), py::arg("gx"),
      py::arg("ggamma"), py::arg("gbeta"), py::arg("threads"),
      "Backward of residual_norm_fwd from gy [rows, h] (and y when act != 0): gz, gx [rows, h], ggamma, gbeta [h]; "
      "0 to skip one (float32; the sums over rows are the same for any thread count).");
  m.def(
      "ff_fwd",
      [](uintptr_t x, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t b2, uintptr_t z, int64_t t, int64_t k,
         int64_t n, int64_t m, int act, int threads) {
        check_threads(threads);
        check_activation(act);
        check_buffer("x", x, {t, k});
        check_buffer("w1", w1, {n, k});
        if (b1 != 0) check_buffer("b1", b1, {n});
        check_buffer("w2", w2, {m, n});
        if (b2 != 0) check_buffer("b2", b2, {m});
        check_buffer("z", z, {t, m});
        py::gil_scoped_release nogil;
        table()->ff_forward(ptr<const float>(x), ptr<const float>(w1), b1 ? ptr<const float>(b1) : nullptr,
                            ptr<const float>(w2), b2 ? ptr<const float>(b2) : nullptr, ptr<float>(z), t, k, n, m,
                            act, threads);
      },
      py::arg("x"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("z"), py::arg("t"),
      py::arg("k"), py::arg("n"), py::arg("m"), py::arg("act"), py::arg("threads"),
      "z [t, m] = act(x [t, k] w1^T + b1) w2^T + b2 (w1 [n, k], w2 [m, n]; b1 [n], b2 [m], or 0 for none; act 0 "
      "none, 1 ELU, 2 ELU + 1; float32), the hidden layer kept in cache.");
  m.def(
      "ff_bwd",
      [](uintptr_t g, uintptr_t x, uintptr_t w1, uintptr_t b1, uintptr_t w2, uintptr_t gx, uintptr_t gw1,
         uintptr_t gb1, uintptr_t gw2, uintptr_t gb2, int64_t t, int64_t k, int64_t n, int64_t m, int act,
         int threads) {
        check_threads(threads);
        check_activation(act);
        check_buffer("g", g, {t, m});
        check_buffer("x", x, {t, k});
        check_buffer("w1", w1, {n, k});
        if (b1 != 0) check_buffer("b1", b1, {n});
        check_buffer("w2", w2, {m, n});
        if (gx != 0) check_buffer("gx", gx, {t, k});
        if (gw1 != 0) check_buffer("gw1", gw1, {n, k});
        if (gb1 != 0) check_buffer("gb1", gb1, {n});
        if (gw2 != 0) check_buffer("gw2", gw2, {m, n});
        if (gb2 != 0) check_buffer("gb2", gb2, {m});
        py::gil_scoped_release nogil;
        table()->ff_backward(ptr<const float>(g), ptr<const float>(x), ptr<const float>(w1),
                             b1 ? ptr<const float>(b1) : nullptr, ptr<const float>(w2), gx ? ptr<float>(gx) : nullptr,
                             gw1 ? ptr<float>(gw1) : nullptr, gb1 ? ptr<float>(gb1) : nullptr,
                             gw2 ? ptr<float>(gw2) : nullptr, gb2 ? ptr<float>(gb2) : nullptr, t, k, n, m, act,
                             threads);
      },
      py::arg("g"), py::arg("x"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("gx"), py::arg("gw1"),
      py::arg("gb1"), py::arg("gw2"), py::arg("gb2"), py::arg("t"), py::arg("k"), py::arg("n"), py::arg("m"),
      py::arg("act"), py::arg("threads"),
      "Backward of ff_fwd from g = dL/dz [t, m], the hidden layer recomputed: gx [t, k], gw1 [n, k], gb1 [n], "
      "gw2 [m, n], gb2 [m]; 0 to skip one (float32; the thread count fixes the order of the sums).");
  m.def(
      "rank_count",
      [](uintptr_t scores, uintptr_t excluded, uintptr_t cols, int64_t b, int64_t n, uintptr_t ranks,
         uintptr_t finite, int threads) {
        check_threads(threads);
        check_buffer("scores", scores, {b, n});
        check_typed_buffer<uint8_t>("excluded", excluded, {b, n});
        check_typed_buffer<int64_t>("cols", cols, {b});
        check_typed_buffer<int64_t>("ranks", ranks, {b});
        check_typed_buffer<uint8_t>("finite", finite, {b});
        const int64_t* c = ptr<const int64_t>(cols);
        for (int64_t i = 0; i < b; ++i)
          if (c[i] < 0 || c[i] >= n)
            throw std::invalid_argument("cols[" + std::to_string(i) + "] = " + std::to_string(c[i]) +
                                        " is not a column of [0, " + std::to_string(n) + ")");
        py::gil_scoped_release nogil;
        table()->rank_count(ptr<const float>(scores), ptr<const uint8_t>(excluded), c, b, n, ptr<int64_t>(ranks),
                            ptr<uint8_t>(finite), threads);
      },
      py::arg("scores"), py::arg("excluded"), py::arg("cols"), py::arg("b"), py::arg("n"), py::arg("ranks"),
      py::arg("finite"), py::arg("threads"),
      "ranks [b] (int64): per row, the items j ranked ahead of the target column cols[r] (s_j > t, or s_j == t and "
      "j < cols[r]) where s = scores [b, n] float32 with the excluded [b, n] (bool bytes) items at -inf; finite [b] "
      "(bool bytes): every raw score of the row finite.");
}
