// Cross-entropy over the vocabulary, with the gradient written over the logits.
// One block per row: an online max/sum pass, then (for training) the gradient pass.
// With the gradient, when a row fits in shared memory (V <= ~56k floats, V and the
// row stride multiples of 4), the first pass also keeps the row in shared memory, so
// the logits are read from memory once and written once (the floor), not read twice.
// The loss sum is a fixed-order device reduction, copied to the host once.
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

constexpr int kThreads = 256;

// Combines two (max, sum of exp(x - max)) pairs.
__device__ __forceinline__ void combine(float& m, float& s, float m2, float s2) {
  if (m2 == -FLT_MAX) return;
  if (m == -FLT_MAX) { m = m2; s = s2; return; }
  const float mm = fmaxf(m, m2);
  s = s * expf(m - mm) + s2 * expf(m2 - mm);
  m = mm;
}

// torch: loss[t] = F.cross_entropy(logits[t], target[t]) (0 when target < 0);
// with scale != 0, logits[t] = (softmax(logits[t]) - onehot(target[t])) * scale.
// flags[0] is set when a target is >= V (the host turns it into an Error).
__global__ void __launch_bounds__(kThreads)
xent_kernel(int V, float* logits, int ldl, const int32_t* targets, float scale,
            double* row_loss, int* flags) {
  __shared__ float sm[kThreads / 32], ss[kThreads / 32];
  const int t = blockIdx.x;
  float* row = logits + size_t(t) * ldl;
  const int target = targets[t];
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) {
      row_loss[t] = 0.0;
      if (target >= V) flags[0] = 1;
    }
    if (scale != 0.0f)
      for (int i = threadIdx.x; i < V; i += kThreads) row[i] = 0.0f;
    return;
  }
  float m = -FLT_MAX, s = 0.0f;  // online: s = sum exp(x - m)
  for (int i = threadIdx.x; i < V; i += kThreads) {
    const float x = row[i];
    if (x > m) {
      s = s * expf(m - x) + 1.0f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    combine(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sm[warp] = m; ss[warp] = s; }
  __syncthreads();
  m = sm[0];
  s = ss[0];
  for (int w = 1; w < kThreads / 32; ++w) combine(m, s, sm[w], ss[w]);  // every thread, same order
  const float target_logit = row[target];
  __syncthreads();  // everyone has read row[target] before it is overwritten
  if (threadIdx.x == 0) row_loss[t] = log(double(s)) + double(m) - double(target_logit);
  if (scale != 0.0f) {
    const float k = scale / s;
    for (int i = threadIdx.x; i < V; i += kThreads) {
      const float g = expf(row[i] - m) * k;
      row[i] = i == target ? g - scale : g;
    }
  }
}


constexpr int kRowThreads = 1024;  // the in-shared-memory kernel: one block per SM

// The same function as xent_kernel (scale != 0), reading the row once: 16-byte loads
// into shared memory with the online max/sum, then the gradient from shared memory.
// row_s: V floats of dynamic shared memory.
// Measured at (32768, 50280) on the H200: 5.0 ms (two-pass kernel 7.2 ms; floor 3.1 ms).
// Not the exps: one MUFU.EX2 per exp instead of expf measured the same 5.0 ms. With one
// row per SM the read phase, the barrier and the write phase of a row do not overlap.
__global__ void __launch_bounds__(kRowThreads, 1)
xent_row_in_smem_kernel(int V, float* logits, int ldl, const int32_t* targets, float scale,
                        double* row_loss, int* flags) {
  extern __shared__ float4 row_s[];  // (V / 4)
  __shared__ float sm[kRowThreads / 32], ss[kRowThreads / 32];
  const int t = blockIdx.x, V4 = V / 4;
  float4* row = reinterpret_cast<float4*>(logits + size_t(t) * ldl);
  const int target = targets[t];
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) {
      row_loss[t] = 0.0;
      if (target >= V) flags[0] = 1;
    }
    for (int i = threadIdx.x; i < V4; i += kRowThreads) row[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    return;
  }
  float m = -FLT_MAX, s = 0.0f;  // online: s = sum exp(x - m)
  constexpr int kAhead = 4;      // 16-byte loads in flight per thread
  for (int i0 = threadIdx.x; i0 < V4; i0 += kAhead * kRowThreads) {
    float4 v[kAhead];
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const int i = i0 + a * kRowThreads;
      if (i < V4) v[a] = row[i];
    }
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const int i = i0 + a * kRowThreads;
      if (i >= V4) break;
      row_s[i] = v[a];
      const float m4 = fmaxf(fmaxf(v[a].x, v[a].y), fmaxf(v[a].z, v[a].w));
      if (m4 > m) {
        s *= expf(m - m4);
        m = m4;
      }
      s += (expf(v[a].x - m) + expf(v[a].y - m)) + (expf(v[a].z - m) + expf(v[a].w - m));
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    combine(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sm[warp] = m; ss[warp] = s; }
  __syncthreads();  // also: row_s is complete
  m = sm[0];
  s = ss[0];
  for (int w = 1; w < kRowThreads / 32; ++w) combine(m, s, sm[w], ss[w]);  // every thread, same order
  const float* rs = reinterpret_cast<const float*>(row_s);
  if (threadIdx.x == 0) row_loss[t] = log(double(s)) + double(m) - double(rs[target]);
  const float k = scale / s;
  for (int i = threadIdx.x; i < V4; i += kRowThreads) {
    const float4 v = row_s[i];
    float4 g = make_float4(expf(v.x - m) * k, expf(v.y - m) * k, expf(v.z - m) * k, expf(v.w - m) * k);
    if (i == target / 4) (&g.x)[target % 4] -= scale;
    row[i] = g;
  }
}

}  // namespace

double cross_entropy(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets,
                     float dlogits_scale) {
  if (T == 0) return 0.0;
  auto* row_loss = static_cast<double*>(c.scratch->get(kRowLoss, size_t(T) * sizeof(double)));
  auto* result = static_cast<double*>(c.scratch->get(kReduce, 2 * sizeof(double)));
  int* flags = reinterpret_cast<int*>(result + 1);
  BHASA_CUDA_CHECK(cudaMemsetAsync(flags, 0, sizeof(int), c.stream));
  static const int smem_limit = [] {
    int dev = 0, bytes = 0;
    BHASA_CUDA_CHECK(cudaGetDevice(&dev));
    BHASA_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return bytes - 1024;  // room for the kernel's static shared memory
  }();
  const size_t row_bytes = size_t(V) * sizeof(float);
  if (dlogits_scale != 0.0f && V % 4 == 0 && ldl % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
      row_bytes <= size_t(smem_limit)) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(xent_row_in_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(row_bytes)));
    xent_row_in_smem_kernel<<<T, kRowThreads, row_bytes, c.stream>>>(V, logits, ldl, targets, dlogits_scale,
                                                                      row_loss, flags);
  } else {
    xent_kernel<<<T, kThreads, 0, c.stream>>>(V, logits, ldl, targets, dlogits_scale, row_loss, flags);
  }
  BHASA_LAUNCH_CHECK("cross_entropy");
  sum_doubles_in_order<kThreads><<<1, kThreads, 0, c.stream>>>(T, row_loss, result);
  BHASA_LAUNCH_CHECK("cross_entropy_sum");
  BHASA_CUDA_CHECK(cudaMemcpyAsync(c.host_result, result, 2 * sizeof(double), cudaMemcpyDeviceToHost, c.stream));
  BHASA_CUDA_CHECK(cudaStreamSynchronize(c.stream));
  int flag = 0;
  std::memcpy(&flag, c.host_result + 1, sizeof(int));
  check(flag == 0, "cross_entropy: a target id is outside the vocabulary of " + std::to_string(V) +
                       "; check the data was tokenized for this model");
  return c.host_result[0];
}

}  // namespace bhasa::cuda
