// Optimizer kernels: AdamW, the squared norm for gradient clipping, and axpy.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSumBlocks = 1024;  // fixed: the reduction order does not depend on the GPU

// torch.optim.AdamW (decoupled weight decay), with g pre-scaled by grad_scale:
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * p)
__device__ __forceinline__ void adamw_one(float& p, float g, float& m, float& v, float lr, float b1,
                                          float b2, float eps, float wd, float bc1, float bc2,
                                          float grad_scale) {
  const float gi = g * grad_scale;
  m = b1 * m + (1.0f - b1) * gi;
  v = b2 * v + (1.0f - b2) * gi * gi;
  p -= lr * ((m / bc1) / (sqrtf(v / bc2) + eps) + wd * p);
}

// p16 (n) bf16 or null: the weights' bf16 mirror, written in the same pass (torch:
// p16 = p.to(torch.bfloat16)), so the mirror needs no separate refresh (weight_mirror.cu).
__global__ void adamw_kernel(size_t n, float* p, const float* g, float* m, float* v, float lr,
                             float b1, float b2, float eps, float wd, float bc1, float bc2,
                             float grad_scale, __nv_bfloat16* p16) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  adamw_one(p[i], g[i], m[i], v[i], lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  if (p16) p16[i] = __float2bfloat16_rn(p[i]);
}

// The same with 16-byte accesses: element 4i .. 4i+3 per thread (all four arrays 16-byte
// aligned, p16 8-byte; n % 4 elements left to adamw_kernel). kMirror: p16 written.
template <bool kMirror>
__global__ void adamw_vec_kernel(size_t n4, float4* p, const float4* g, float4* m, float4* v,
                                 float lr, float b1, float b2, float eps, float wd, float bc1,
                                 float bc2, float grad_scale, uint2* p16) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= n4) return;
  float4 pi = p[i], mi = m[i], vi = v[i];
  const float4 gi = g[i];
  adamw_one(pi.x, gi.x, mi.x, vi.x, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  adamw_one(pi.y, gi.y, mi.y, vi.y, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  adamw_one(pi.z, gi.z, mi.z, vi.z, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  adamw_one(pi.w, gi.w, mi.w, vi.w, lr, b1, b2, eps, wd, bc1, bc2, grad_scale);
  p[i] = pi;
  m[i] = mi;
  v[i] = vi;
  if constexpr (kMirror) {
    __nv_bfloat162 q[2] = {__floats2bfloat162_rn(pi.x, pi.y), __floats2bfloat162_rn(pi.z, pi.w)};
    p16[i] = *reinterpret_cast<const uint2*>(q);
  }
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
           float b2, float eps, float wd, int step, float grad_scale, void* p16_) {
  check(step >= 1, "adamw: step must be >= 1 (it counts from 1), got " + std::to_string(step));
  if (n == 0) return;
  // Bias corrections in double: b2^t for b2 = 0.999 needs the precision at small t.
  const float bc1 = float(1.0 - std::pow(double(b1), step));
  const float bc2 = float(1.0 - std::pow(double(b2), step));
  auto* p16 = static_cast<__nv_bfloat16*>(p16_);
  auto aligned = [](const void* q, int a) { return reinterpret_cast<uintptr_t>(q) % a == 0; };
  size_t done = 0;
  if (aligned(p, 16) && aligned(g, 16) && aligned(m, 16) && aligned(v, 16) && (!p16 || aligned(p16, 8)) && n >= 4) {
    const size_t n4 = n / 4;
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(n4, kThreads), kThreads, 0, c.stream>>>(
          n4, reinterpret_cast<float4*>(p), reinterpret_cast<const float4*>(g), reinterpret_cast<float4*>(m),
          reinterpret_cast<float4*>(v), lr, b1, b2, eps, wd, bc1, bc2, grad_scale, reinterpret_cast<uint2*>(p16));
    };
    if (p16) launch(adamw_vec_kernel<true>);
    else launch(adamw_vec_kernel<false>);
    done = 4 * n4;
  }
  if (done < n)
    adamw_kernel<<<blocks_for(n - done, kThreads), kThreads, 0, c.stream>>>(
        n - done, p + done, g + done, m + done, v + done, lr, b1, b2, eps, wd, bc1, bc2, grad_scale,
        p16 ? p16 + done : nullptr);
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
