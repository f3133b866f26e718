// Optimizer kernels: AdamW, the squared norm for gradient clipping, and axpy.
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSumBlocks = 1024;  // fixed: the reduction order does not depend on the GPU

// torch.optim.AdamW (decoupled weight decay), with g pre-scaled by grad_scale:
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p)
__global__ void adamw_kernel(size_t n, float* p, const float* g, float* m, float* v, float lr,
                             float b1, float b2, float eps, float wd, float bc1, float bc2,
                             float grad_scale) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float gi = g[i] * grad_scale;
  const float mi = b1 * m[i] + (1.0f - b1) * gi;
  const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
  m[i] = mi;
  v[i] = vi;
  p[i] -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * p[i]);
}

// torch: (g.double() ** 2).sum(), as kSumBlocks fixed partials then one block.
__global__ void sum_squares_partials(size_t n, const float* g, double* partials) {
  __shared__ double part[kThreads];
  double acc = 0.0;
  for (size_t i = blockIdx.x * size_t(kThreads) + threadIdx.x; i < n; i += size_t(kSumBlocks) * kThreads)
    acc += double(g[i]) * double(g[i]);
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = part[0];
}


// torch: y += alpha * x
__global__ void axpy_kernel(size_t n, float alpha, const float* x, float* y) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += alpha * x[i];
}

}  // namespace

void adamw(Ctx& c, size_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
           float b2, float eps, float wd, int step, float grad_scale) {
  check(step >= 1, "adamw: step must be >= 1 (it counts from 1), got " + std::to_string(step));
  if (n == 0) return;
  // Bias corrections in double: b2^t for b2 = 0.999 needs the precision at small t.
  const float bc1 = float(1.0 - std::pow(double(b1), step));
  const float bc2 = float(1.0 - std::pow(double(b2), step));
  adamw_kernel<<<blocks_for(n, kThreads), kThreads, 0, c.stream>>>(n, p, g, m, v, lr, b1, b2, eps, wd,
                                                                   bc1, bc2, grad_scale);
  BHASA_LAUNCH_CHECK("adamw");
}

double sum_squares(Ctx& c, size_t n, const float* g) {
  if (n == 0) return 0.0;
  auto* partials = static_cast<double*>(c.scratch->get(kReduce, (kSumBlocks + 1) * sizeof(double)));
  sum_squares_partials<<<kSumBlocks, kThreads, 0, c.stream>>>(n, g, partials);
  BHASA_LAUNCH_CHECK("sum_squares");
  sum_doubles_in_order<kThreads><<<1, kThreads, 0, c.stream>>>(kSumBlocks, partials, partials + kSumBlocks);
  BHASA_LAUNCH_CHECK("sum_squares_total");
  BHASA_CUDA_CHECK(cudaMemcpyAsync(c.host_result, partials + kSumBlocks, sizeof(double),
                                   cudaMemcpyDeviceToHost, c.stream));
  BHASA_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  return c.host_result[0];
}

void axpy(Ctx& c, size_t n, float alpha, const float* x, float* y) {
  if (n == 0) return;
  axpy_kernel<<<blocks_for(n, kThreads), kThreads, 0, c.stream>>>(n, alpha, x, y);
  BHASA_LAUNCH_CHECK("axpy");
}

}  // namespace bhasa::cuda
