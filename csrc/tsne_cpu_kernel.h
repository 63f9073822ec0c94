// The loops of one exact t-SNE iteration on 2-D points stored as two planes (x and y).
//
// Included twice by tsne_cpu.cpp: once inside `#pragma GCC target("avx2,fma")` and once for the
// baseline ISA, each copy in its own namespace (TSNE_NS); the caller picks one at run time.
// The inner loops are `#pragma omp simd` loops over __restrict planes: the pragma lets gcc keep
// per-lane partial sums for the reductions (a plain float loop may not be reassociated), so the
// summation order depends on the vector width but is fixed for a given copy, hence
// deterministic. 1 / (1 + d^2) stays an IEEE division (no reciprocal estimate), as in torch.
//
// The mathematics is that of kernels/tsne_grad.py:
//     w_ij   = 1 / (1 + |y_i - y_j|^2),      Z = sum_{i != j} w_ij
//     grad_i = 4 * (alpha * sum_j p_ij w_ij (y_i - y_j) - sum_j w_ij^2 (y_i - y_j) / Z)

namespace st_fast_tsne {
namespace TSNE_NS {

// Attractive sums for rows [begin, end): sum_j p_ij w_ij (y_i - y_j) over row i's stored
// entries of P (CSR). P has ~3 * perplexity to 6 * perplexity entries per row, so this is a
// small fraction of the pair loop below; the neighbours' coordinates are gathered.
static void attractive_rows(const float* __restrict px, const float* __restrict py,
                            const int32_t* __restrict indptr, const int32_t* __restrict indices,
                            const float* __restrict values, int64_t begin, int64_t end,
                            float* __restrict ax, float* __restrict ay) {
  for (int64_t i = begin; i < end; ++i) {
    const float xi = px[i], yi = py[i];
    float sx = 0.0f, sy = 0.0f;
#pragma omp simd reduction(+ : sx, sy)
    for (int32_t e = indptr[i]; e < indptr[i + 1]; ++e) {
      const int32_t j = indices[e];
      const float dx = xi - px[j], dy = yi - py[j];
      const float pw = values[e] * (1.0f / (1.0f + dx * dx + dy * dy));
      sx += pw * dx;
      sy += pw * dy;
    }
    ax[i] = sx;
    ay[i] = sy;
  }
}

// Repulsion over the pairs (i, j > i) of rows [row_begin, row_end), each pair visited once:
// row i gets + w^2 (y_i - y_j) and row j gets - w^2 (y_i - y_j), both into this task's own
// buffers (rx, ry), which the caller has zeroed from row_begin on. Returns the sum of w over the
// pairs (half of those rows' share of Z), accumulated per row in float and across rows in double.
static double repulsive_pairs(const float* __restrict px, const float* __restrict py, int64_t n,
                              int64_t row_begin, int64_t row_end, float* __restrict rx,
                              float* __restrict ry) {
  double z = 0.0;
  for (int64_t i = row_begin; i < row_end; ++i) {
    const float xi = px[i], yi = py[i];
    float sx = 0.0f, sy = 0.0f, zi = 0.0f;
#pragma omp simd reduction(+ : sx, sy, zi)
    for (int64_t j = i + 1; j < n; ++j) {
      const float dx = xi - px[j], dy = yi - py[j];
      const float w = 1.0f / (1.0f + dx * dx + dy * dy);
      const float ww = w * w;
      sx += ww * dx;
      sy += ww * dy;
      zi += w;
      rx[j] -= ww * dx;  // distinct j per lane: no dependence between iterations
      ry[j] -= ww * dy;
    }
    rx[i] += sx;
    ry[i] += sy;
    z += zi;
  }
  return z;
}

// The optimiser step of kernels/tsne_grad.py `tsne_update_reference` on one plane, with the
// gradient formed from the force sums on the way:
//     gains  = where(grad * update < 0, gains + 0.2, gains * 0.8), at least min_gain
//     update = momentum * update - lr * gains * grad;   y += update
static void update_plane(float* __restrict pos, float* __restrict upd, float* __restrict gain,
                         const float* __restrict att, const float* __restrict rep, int64_t n,
                         float exaggeration, float inv_z, float momentum, float learning_rate,
                         float min_gain) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float grad = 4.0f * (exaggeration * att[i] - rep[i] * inv_z);
    const float g = grad * upd[i] < 0.0f ? gain[i] + 0.2f : gain[i] * 0.8f;
    gain[i] = g < min_gain ? min_gain : g;
    upd[i] = momentum * upd[i] - learning_rate * gain[i] * grad;
    pos[i] += upd[i];
  }
}

}  // namespace TSNE_NS
}  // namespace st_fast_tsne
