// RMSNorm and LayerNorm, forward and backward: one warp per row, and the weight
// gradients through per-row-group partials summed in a fixed order (no atomics).
#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // warps per block, one row each
constexpr int kRowGroups = 256;   // partial sums of dw/db per column

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// rms:   torch: out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
// layer: torch: out = F.layer_norm(x, (D,), w, b, eps)
__global__ void norm_forward_kernel(int T, int D, bool rms, float eps, const float* x,
                                    const float* w, const float* b, float* out, float* mean,
                                    float* rstd) {
  const int t = blockIdx.x * kRowsPerBlock + threadIdx.y;
  const int lane = threadIdx.x;
  if (t >= T) return;
  const float* xt = x + size_t(t) * D;
  float* ot = out + size_t(t) * D;
  float mu = 0.0f;
  if (!rms) {
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += xt[d];
    mu = warp_sum(s) / D;
  }
  float ss = 0.0f;  // sum of squares about mu
  for (int d = lane; d < D; d += 32) ss += (xt[d] - mu) * (xt[d] - mu);
  const float r = 1.0f / sqrtf(warp_sum(ss) / D + eps);
  for (int d = lane; d < D; d += 32) ot[d] = (xt[d] - mu) * r * w[d] + (b ? b[d] : 0.0f);
  if (lane == 0) {
    if (mean) mean[t] = mu;
    rstd[t] = r;
  }
}

// dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * w,  xhat = (x - mean) * rstd
// (mean(g) term only for LayerNorm)
__global__ void norm_backward_dx_kernel(int T, int D, bool rms, const float* dout,
                                        const float* x, const float* w, const float* mean,
                                        const float* rstd, float* dx) {
  const int t = blockIdx.x * kRowsPerBlock + threadIdx.y;
  const int lane = threadIdx.x;
  if (t >= T) return;
  const float* xt = x + size_t(t) * D;
  const float* gt = dout + size_t(t) * D;
  float* dxt = dx + size_t(t) * D;
  const float mu = rms ? 0.0f : mean[t];
  const float r = rstd[t];
  float sg = 0.0f, sgx = 0.0f;
  for (int d = lane; d < D; d += 32) {
    const float g = gt[d] * w[d];
    sg += g;
    sgx += g * (xt[d] - mu) * r;
  }
  const float mean_g = rms ? 0.0f : warp_sum(sg) / D;
  const float mean_gx = warp_sum(sgx) / D;
  for (int d = lane; d < D; d += 32) {
    const float xhat = (xt[d] - mu) * r;
    dxt[d] += r * (gt[d] * w[d] - mean_g - xhat * mean_gx);
  }
}

// partial[p][d] = sum over rows of group p of dout * xhat (and of dout for db).
// One thread per column; rows walked in order.
__global__ void norm_backward_dw_partials(int T, int D, bool rms, const float* dout,
                                          const float* x, const float* mean, const float* rstd,
                                          int rows_per_group, float* pdw, float* pdb) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  const int p = blockIdx.y;
  if (d >= D) return;
  const int t0 = p * rows_per_group, t1 = min(T, t0 + rows_per_group);
  float sw = 0.0f, sb = 0.0f;
  for (int t = t0; t < t1; ++t) {
    const float g = dout[size_t(t) * D + d];
    const float mu = rms ? 0.0f : mean[t];
    sw += g * (x[size_t(t) * D + d] - mu) * rstd[t];
    sb += g;
  }
  pdw[size_t(p) * D + d] = sw;
  pdb[size_t(p) * D + d] = sb;
}

// dw[d] += sum_p pdw[p][d] (in p order); likewise db.
__global__ void norm_backward_dw_finish(int D, int groups, const float* pdw, const float* pdb,
                                        float* dw, float* db) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float sw = 0.0f, sb = 0.0f;
  for (int p = 0; p < groups; ++p) {
    sw += pdw[size_t(p) * D + d];
    sb += pdb[size_t(p) * D + d];
  }
  dw[d] += sw;
  if (db) db[d] += sb;
}

}  // namespace

void norm_forward(Ctx& c, int T, int D, bool rms, float eps, const float* x, const float* w,
                  const float* b, float* out, float* mean, float* rstd) {
  if (T == 0) return;
  norm_forward_kernel<<<blocks_for(T, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, c.stream>>>(
      T, D, rms, eps, x, w, b, out, mean, rstd);
  BHASA_LAUNCH_CHECK("norm_forward");
}

void norm_backward(Ctx& c, int T, int D, bool rms, const float* dout, const float* x,
                   const float* w, const float* mean, const float* rstd, float* dx, float* dw,
                   float* db) {
  if (T == 0) return;
  norm_backward_dx_kernel<<<blocks_for(T, kRowsPerBlock), dim3(32, kRowsPerBlock), 0, c.stream>>>(
      T, D, rms, dout, x, w, mean, rstd, dx);
  BHASA_LAUNCH_CHECK("norm_backward_dx");
  const int rows_per_group = (T + kRowGroups - 1) / kRowGroups;
  const int groups = (T + rows_per_group - 1) / rows_per_group;
  auto* part = static_cast<float*>(c.scratch->get(kNormPartials, 2 * size_t(groups) * D * sizeof(float)));
  float* pdw = part;                    // (groups, D)
  float* pdb = part + size_t(groups) * D;  // (groups, D)
  dim3 grid(blocks_for(D, 128), groups);
  norm_backward_dw_partials<<<grid, 128, 0, c.stream>>>(T, D, rms, dout, x, mean, rstd,
                                                        rows_per_group, pdw, pdb);
  BHASA_LAUNCH_CHECK("norm_backward_dw_partials");
  norm_backward_dw_finish<<<blocks_for(D, 128), 128, 0, c.stream>>>(D, groups, pdw, pdb, dw, db);
  BHASA_LAUNCH_CHECK("norm_backward_dw_finish");
}

}  // namespace bhasa::cuda
