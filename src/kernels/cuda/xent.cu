// Cross-entropy over the vocabulary, with the gradient written over the logits.
// One block per row: an online max/sum pass, then (for training) the gradient pass.
// With the gradient, when a row fits in shared memory (V <= ~56k floats, V and the
// row stride multiples of 4), the first pass also keeps the row in shared memory, so
// the logits are read from memory once and written once (the floor), not read twice.
// The loss sum is a fixed-order device reduction, copied to the host once.
// The fused training head (head.cu) runs a bf16 version on its chunks of logits.
#include <cuda_bf16.h>

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

// bf16 logits (the fused training head, head.cu): a row is half the bytes, so two rows fit
// an SM's shared memory (2 x 100.5 KB at V = 50280) and one row's read phase overlaps the
// other's write phase. 16-byte accesses: 8 logits each.
constexpr int kBf16Threads = 512;

// exp(x - m) = ex2_(x log2e - m log2e): exp2 on the special-function unit (rel. error ~2^-22)

__device__ __forceinline__ void unpack8(const uint4& v, float* x) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(h[j]);
    x[2 * j] = f.x;
    x[2 * j + 1] = f.y;
  }
}

// torch: loss[t] = F.cross_entropy(logits[t].float(), target[t]) (0 when target < 0); with
// scale != 0, logits[t] = ((softmax(logits[t].float()) - onehot(target[t])) * scale).bfloat16().
// logits (T, ldl) bf16, ldl % 8 == 0, 16-byte aligned; columns V..ldl-1 are ignored (and
// zeroed with the gradient). kRowInSmem: the row is kept in shared memory ((V + 7) / 8
// uint4 of dynamic shared memory) between the two passes, otherwise read again.
template <bool kRowInSmem>
__global__ void __launch_bounds__(kBf16Threads, 2)
xent_bf16_kernel(int V, __nv_bfloat16* logits, int ldl, const int32_t* targets, float scale,
                 double* row_loss, int* flags) {
  extern __shared__ uint4 row_s8[];  // (V + 7) / 8: 8 bf16 each
  __shared__ float sm[kBf16Threads / 32], ss[kBf16Threads / 32];
  __shared__ float target_logit;
  const int t = blockIdx.x, V8 = (V + 7) / 8;
  uint4* row = reinterpret_cast<uint4*>(logits + size_t(t) * ldl);
  const int target = targets[t];
  if (target < 0 || target >= V) {
    if (threadIdx.x == 0) {
      row_loss[t] = 0.0;
      if (target >= V) flags[0] = 1;
    }
    if (scale != 0.0f)
      for (int i = threadIdx.x; i < V8; i += kBf16Threads) row[i] = make_uint4(0, 0, 0, 0);
    return;
  }
  if (threadIdx.x == 0) target_logit = __bfloat162float(logits[size_t(t) * ldl + target]);
  float m = -FLT_MAX, s = 0.0f;  // online: s = sum exp(x - m)
  // 16-byte loads in flight per thread: 8 (63 registers) measured 0.06 ms per 8192 rows
  // faster than 4 (48 registers), in shared memory or not.
  constexpr int kAhead = 8;
  for (int i0 = threadIdx.x; i0 < V8; i0 += kAhead * kBf16Threads) {
    uint4 v[kAhead];
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const int i = i0 + a * kBf16Threads;
      if (i < V8) v[a] = row[i];
    }
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const int i = i0 + a * kBf16Threads;
      if (i >= V8) break;
      if (kRowInSmem) row_s8[i] = v[a];
      float x[8];
      unpack8(v[a], x);
      if (i * 8 + 8 > V)  // the padding after the last column (only the row's last 8 can have it)
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (i * 8 + j >= V) x[j] = -INFINITY;
      const float m8 = fmaxf(fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3])), fmaxf(fmaxf(x[4], x[5]), fmaxf(x[6], x[7])));
      if (m8 > m) {
        s *= ex2_((m - m8) * kLog2e);
        m = m8;
      }
      const float ml = m * kLog2e;
      float e = 0.0f;
#pragma unroll
      for (int j = 0; j < 8; ++j) e += ex2_(fmaf(x[j], kLog2e, -ml));
      s += e;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    combine(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sm[warp] = m; ss[warp] = s; }
  __syncthreads();  // also: row_s8 and target_logit are written
  m = sm[0];
  s = ss[0];
  for (int w = 1; w < kBf16Threads / 32; ++w) combine(m, s, sm[w], ss[w]);  // every thread, same order
  if (threadIdx.x == 0) row_loss[t] = log(double(s)) + double(m) - double(target_logit);
  if (scale == 0.0f) return;
  const float k = scale / s, ml = m * kLog2e;
  for (int i = threadIdx.x; i < V8; i += kBf16Threads) {
    float x[8];
    unpack8(kRowInSmem ? row_s8[i] : row[i], x);
    float g[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) g[j] = ex2_(fmaf(x[j], kLog2e, -ml)) * k;
    // The per-column tests only in the 8 columns that need them: the row's last (padding)
    // and the target's.
    if (i * 8 + 8 > V)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (i * 8 + j >= V) g[j] = 0.0f;
    if (i == target / 8)
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j == target % 8) g[j] -= scale;
    uint4 out;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
    for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(g[2 * j], g[2 * j + 1]);
    row[i] = out;
  }
}

int smem_limit() {  // dynamic shared memory a block may opt in to
  static const int bytes = [] {
    int dev = 0, b = 0;
    BHASA_CUDA_CHECK(cudaGetDevice(&dev));
    BHASA_CUDA_CHECK(cudaDeviceGetAttribute(&b, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return b - 1024;  // room for the kernel's static shared memory
  }();
  return bytes;
}

}  // namespace

int* xent_flags(Ctx& c) {
  auto* result = static_cast<double*>(c.scratch->get(kReduce, 2 * sizeof(double)));
  int* flags = reinterpret_cast<int*>(result + 1);
  BHASA_CUDA_CHECK(cudaMemsetAsync(flags, 0, sizeof(int), c.stream));
  return flags;
}

void xent_rows(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets, float dlogits_scale,
               double* row_loss, int* flags) {
  if (T == 0) return;
  const size_t row_bytes = size_t(V) * sizeof(float);
  if (dlogits_scale != 0.0f && V % 4 == 0 && ldl % 4 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
      row_bytes <= size_t(smem_limit())) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(xent_row_in_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(row_bytes)));
    xent_row_in_smem_kernel<<<T, kRowThreads, row_bytes, c.stream>>>(V, logits, ldl, targets, dlogits_scale,
                                                                      row_loss, flags);
  } else {
    xent_kernel<<<T, kThreads, 0, c.stream>>>(V, logits, ldl, targets, dlogits_scale, row_loss, flags);
  }
  BHASA_LAUNCH_CHECK("cross_entropy");
}

void xent_bf16_rows(Ctx& c, int T, int V, void* logits, int ldl, const int32_t* targets, float dlogits_scale,
                    double* row_loss, int* flags) {
  if (T == 0) return;
  check(ldl % 8 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0,
        "xent_bf16_rows: the logits need 16-byte aligned rows");
  auto* l = static_cast<__nv_bfloat16*>(logits);
  const size_t row_bytes = size_t(V + 7) / 8 * 16;
  if (row_bytes <= size_t(smem_limit())) {
    BHASA_CUDA_CHECK(cudaFuncSetAttribute(xent_bf16_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          int(row_bytes)));
    xent_bf16_kernel<true><<<T, kBf16Threads, row_bytes, c.stream>>>(V, l, ldl, targets, dlogits_scale,
                                                                      row_loss, flags);
  } else {
    xent_bf16_kernel<false><<<T, kBf16Threads, 0, c.stream>>>(V, l, ldl, targets, dlogits_scale, row_loss, flags);
  }
  BHASA_LAUNCH_CHECK("cross_entropy (bf16)");
}

double xent_total(Ctx& c, int T, int V, const double* row_loss) {
  auto* result = static_cast<double*>(c.scratch->get(kReduce, 2 * sizeof(double)));
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

double cross_entropy(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets,
                     float dlogits_scale) {
  if (T == 0) return 0.0;
  auto* row_loss = static_cast<double*>(c.scratch->get(kRowLoss, size_t(T) * sizeof(double)));
  int* flags = xent_flags(c);
  xent_rows(c, T, V, logits, ldl, targets, dlogits_scale, row_loss, flags);
  return xent_total(c, T, V, row_loss);
}

}  // namespace bhasa::cuda
