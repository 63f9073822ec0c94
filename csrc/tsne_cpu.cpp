// Fused CPU iterations of the exact t-SNE behind st_fast.cluster.tsne's "exact" backend.
//
//   torch.ops.st_fast_tsne.optimise(y, update, gains, indptr, indices, values, exaggeration,
//                                   momentum, learning_rate, min_gain, n_iter) -> ()
//       n_iter iterations in place on y, update, gains (float32 (N, 2), contiguous);
//   torch.ops.st_fast_tsne.gradient(y, indptr, indices, values, exaggeration) -> grad (N, 2);
//   torch.ops.st_fast_tsne.isa() -> "avx2" or "baseline", the copy of the loops that runs.
//
// P is the symmetric affinity matrix in CSR form (indptr int32 (N + 1), indices int32, values
// float32). Nothing of size N x N is stored: per iteration the attractive sums walk P's entries,
// and the repulsive sums and Z are accumulated on the fly over the N (N - 1) / 2 pairs, each
// pair visited once (tsne_cpu_kernel.h). Z is only known at the end of that pass, so the pass
// keeps the unnormalised sum of w^2 (y_i - y_j) and the update divides by Z.
//
// Determinism: the pair triangle is cut into a number of tasks that depends on N only (not on
// the thread count), each with about the same number of pairs and its own force buffers; the
// buffers are added in task order afterwards, and Z in double in task order. So for a given N
// and machine the result is bit for bit the same with any number of threads. No atomics.
//
// Registered with TORCH_LIBRARY (as color_gray.cpp): few headers to compile, and the op
// releases the GIL while it runs.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

// The same loops twice: for AVX2 + FMA (8 floats per vector, fused multiply-adds), and for the
// baseline ISA the compiler targets (SSE2 on x86-64: 4 floats, no fma); run time picks one.
// The build uses -ffp-contract=fast: gcc may fuse a * b + c into one fma in the AVX2 copy (one
// rounding instead of two; faster, and no less accurate). Results therefore differ between the
// two copies in the last bits; each is deterministic on its own.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ST_FAST_TSNE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define TSNE_NS avx2
#include "tsne_cpu_kernel.h"
#undef TSNE_NS
#pragma GCC pop_options
#endif
#define TSNE_NS baseline
#include "tsne_cpu_kernel.h"
#undef TSNE_NS

namespace {

namespace base = st_fast_tsne::baseline;

// One copy of the loops (both copies have the same signatures).
struct Kernels {
  decltype(&base::attractive_rows) attractive;
  decltype(&base::repulsive_pairs) repulsive;
  decltype(&base::update_plane) update;
  const char* isa;
};

// Picked once per process. ST_FAST_TSNE_ISA=baseline forces the baseline copy (tests run both).
const Kernels& picked() {
  static const Kernels k = [] {
#ifdef ST_FAST_TSNE_AVX2
    namespace fast = st_fast_tsne::avx2;
    const char* forced = std::getenv("ST_FAST_TSNE_ISA");
    const bool baseline_forced = forced != nullptr && std::string(forced) == "baseline";
    if (!baseline_forced && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Kernels{&fast::attractive_rows, &fast::repulsive_pairs, &fast::update_plane, "avx2"};
    }
#endif
    return Kernels{&base::attractive_rows, &base::repulsive_pairs, &base::update_plane, "baseline"};
  }();
  return k;
}

// Tasks per pass over the pairs: enough for 24 threads, at least ~32 rows each; 24 divides
// evenly over 1, 2, 3, 4, 6, 8 and 12 threads. Fixed per N, so results do not depend on threads.
constexpr int64_t kMaxTasks = 24;

int64_t task_count(int64_t n) { return std::clamp<int64_t>(n / 32, 1, kMaxTasks); }

// Row boundaries of `tasks` tasks with about equal pair counts: row i owns N - 1 - i pairs.
std::vector<int64_t> task_rows(int64_t n, int64_t tasks) {
  std::vector<int64_t> rows(tasks + 1, n);
  rows[0] = 0;
  const double total = 0.5 * static_cast<double>(n) * static_cast<double>(n - 1);
  double done = 0.0;
  int64_t t = 1;
  for (int64_t i = 0; i < n && t < tasks; ++i) {
    done += static_cast<double>(n - 1 - i);
    while (t < tasks && done >= total * static_cast<double>(t) / static_cast<double>(tasks)) {
      rows[t++] = i + 1;
    }
  }
  return rows;
}

struct Csr {
  const int32_t* indptr;
  const int32_t* indices;
  const float* values;
};

// Planes and buffers of one call, allocated once and reused by every iteration.
struct Workspace {
  int64_t n, tasks;
  std::vector<int64_t> rows;
  std::vector<float> px, py;            // positions
  std::vector<float> ax, ay;            // attractive sums
  std::vector<float> rx, ry;            // repulsive sums (unnormalised)
  std::vector<float> task_rx, task_ry;  // tasks x N, each task's share of the repulsion
  std::vector<double> task_z;

  explicit Workspace(int64_t n_)
      : n(n_),
        tasks(task_count(n_)),
        rows(task_rows(n_, tasks)),
        px(n),
        py(n),
        ax(n),
        ay(n),
        rx(n),
        ry(n),
        task_rx(tasks * n),
        task_ry(tasks * n),
        task_z(tasks) {}

  void load(const float* y) {
    for (int64_t i = 0; i < n; ++i) {
      px[i] = y[2 * i];
      py[i] = y[2 * i + 1];
    }
  }
};

// Force sums for the positions in ws.px / ws.py; returns Z. One parallel region per iteration
// (each is a barrier, and on a shared machine a barrier waits for the slowest thread): task t
// takes its share of the pairs and an even share of the rows of P.
double forces(const Kernels& k, Workspace& ws, const Csr& p) {
  const int64_t n = ws.n, tasks = ws.tasks;
  // Chunks of at least ~64k pairs (~30 us): below that, waking a thread costs more than it saves.
  const int64_t grain =
      std::max<int64_t>(1, (int64_t{1} << 17) * tasks / std::max<int64_t>(1, n * n));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      k.attractive(ws.px.data(), ws.py.data(), p.indptr, p.indices, p.values, n * t / tasks,
                   n * (t + 1) / tasks, ws.ax.data(), ws.ay.data());
      const int64_t first = ws.rows[t];  // a task touches rows >= its first row only
      float* bx = ws.task_rx.data() + t * n;
      float* by = ws.task_ry.data() + t * n;
      std::fill(bx + first, bx + n, 0.0f);
      std::fill(by + first, by + n, 0.0f);
      ws.task_z[t] = k.repulsive(ws.px.data(), ws.py.data(), n, first, ws.rows[t + 1], bx, by);
    }
  });
  std::fill(ws.rx.begin(), ws.rx.end(), 0.0f);
  std::fill(ws.ry.begin(), ws.ry.end(), 0.0f);
  double z = 0.0;
  for (int64_t t = 0; t < ws.tasks; ++t) {  // task order: the same sums for any thread count
    const float* bx = ws.task_rx.data() + t * n;
    const float* by = ws.task_ry.data() + t * n;
    for (int64_t j = ws.rows[t]; j < n; ++j) {
      ws.rx[j] += bx[j];
      ws.ry[j] += by[j];
    }
    z += ws.task_z[t];
  }
  return 2.0 * z;  // each pair stands for w_ij and w_ji
}

float inverse(double z) { return z > 0.0 ? static_cast<float>(1.0 / z) : 0.0f; }  // N < 2: no pairs

void check_points(const at::Tensor& t, const char* what, int64_t n) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.dim() == 2 && t.size(0) == n && t.size(1) == 2,
              "st_fast_tsne: ", what, " must be a contiguous float32 CPU tensor of shape (", n,
              ", 2), got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

Csr check_csr(const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
              int64_t n) {
  TORCH_CHECK(indptr.device().is_cpu() && indptr.scalar_type() == at::kInt &&
                  indptr.is_contiguous() && indptr.dim() == 1 && indptr.numel() == n + 1,
              "st_fast_tsne: indptr must be contiguous int32 of length N + 1 = ", n + 1);
  const int64_t nnz = indices.numel();
  TORCH_CHECK(indices.device().is_cpu() && indices.scalar_type() == at::kInt &&
                  indices.is_contiguous() && indices.dim() == 1,
              "st_fast_tsne: indices must be a contiguous 1-D int32 CPU tensor");
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kFloat &&
                  values.is_contiguous() && values.dim() == 1 && values.numel() == nnz,
              "st_fast_tsne: values must be contiguous float32 with as many entries as indices");
  const int32_t* ip = indptr.data_ptr<int32_t>();
  const int32_t* ix = indices.data_ptr<int32_t>();
  TORCH_CHECK(ip[0] == 0 && ip[n] == nnz, "st_fast_tsne: indptr must run from 0 to nnz = ", nnz);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(ip[i] <= ip[i + 1], "st_fast_tsne: indptr decreases at row ", i);
  }
  for (int64_t e = 0; e < nnz; ++e) {
    TORCH_CHECK(ix[e] >= 0 && ix[e] < n, "st_fast_tsne: column index ", ix[e], " out of [0, ", n,
                ")");
  }
  return {ip, ix, values.data_ptr<float>()};
}

at::Tensor gradient(const at::Tensor& y, const at::Tensor& indptr, const at::Tensor& indices,
                    const at::Tensor& values, double exaggeration) {
  const int64_t n = y.size(0);
  check_points(y, "y", n);
  const Csr p = check_csr(indptr, indices, values, n);
  Workspace ws(n);
  ws.load(y.data_ptr<float>());
  const float inv_z = inverse(forces(picked(), ws, p));
  const float alpha = static_cast<float>(exaggeration);
  at::Tensor grad = at::empty({n, 2}, y.options());
  float* g = grad.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {  // the expression of update_plane in tsne_cpu_kernel.h
    g[2 * i] = 4.0f * (alpha * ws.ax[i] - ws.rx[i] * inv_z);
    g[2 * i + 1] = 4.0f * (alpha * ws.ay[i] - ws.ry[i] * inv_z);
  }
  return grad;
}

void optimise(const at::Tensor& y, const at::Tensor& update, const at::Tensor& gains,
              const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& values,
              double exaggeration, double momentum, double learning_rate, double min_gain,
              int64_t n_iter) {
  const int64_t n = y.size(0);
  check_points(y, "y", n);
  check_points(update, "update", n);
  check_points(gains, "gains", n);
  TORCH_CHECK(n_iter >= 0, "st_fast_tsne: n_iter must be >= 0, got ", n_iter);
  const Csr p = check_csr(indptr, indices, values, n);
  const Kernels& k = picked();
  Workspace ws(n);
  float* yp = y.data_ptr<float>();
  float* up = update.data_ptr<float>();
  float* gp = gains.data_ptr<float>();
  ws.load(yp);
  // The optimiser state as planes too, for the whole loop.
  std::vector<float> ux(n), uy(n), gx(n), gy(n);
  for (int64_t i = 0; i < n; ++i) {
    ux[i] = up[2 * i], uy[i] = up[2 * i + 1];
    gx[i] = gp[2 * i], gy[i] = gp[2 * i + 1];
  }
  const float alpha = static_cast<float>(exaggeration), mom = static_cast<float>(momentum);
  const float lr = static_cast<float>(learning_rate), floor = static_cast<float>(min_gain);
  for (int64_t it = 0; it < n_iter; ++it) {
    const float inv_z = inverse(forces(k, ws, p));
    k.update(ws.px.data(), ux.data(), gx.data(), ws.ax.data(), ws.rx.data(), n, alpha, inv_z, mom,
             lr, floor);
    k.update(ws.py.data(), uy.data(), gy.data(), ws.ay.data(), ws.ry.data(), n, alpha, inv_z, mom,
             lr, floor);
  }
  for (int64_t i = 0; i < n; ++i) {
    yp[2 * i] = ws.px[i], yp[2 * i + 1] = ws.py[i];
    up[2 * i] = ux[i], up[2 * i + 1] = uy[i];
    gp[2 * i] = gx[i], gp[2 * i + 1] = gy[i];
  }
}

std::string isa() { return picked().isa; }

}  // namespace

TORCH_LIBRARY(st_fast_tsne, m) {
  m.def(
      "optimise(Tensor(a!) y, Tensor(b!) update, Tensor(c!) gains, Tensor indptr, "
      "Tensor indices, Tensor values, float exaggeration, float momentum, float learning_rate, "
      "float min_gain, int n_iter) -> ()");
  m.def(
      "gradient(Tensor y, Tensor indptr, Tensor indices, Tensor values, float exaggeration) "
      "-> Tensor");
  m.def("isa() -> str", &isa);  // no tensor argument: one kernel for every dispatch key
  m.impl("optimise", c10::DispatchKey::CPU, TORCH_FN(optimise));
  m.impl("gradient", c10::DispatchKey::CPU, TORCH_FN(gradient));
}
