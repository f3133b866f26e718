// Cross-entropy over the vocabulary, with the gradient written over the logits.
// One block per row: an online max/sum pass, then (for training) the gradient pass.
// The loss sum is a fixed-order device reduction, copied to the host once.
#include <cfloat>
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


}  // namespace

double cross_entropy(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets,
                     float dlogits_scale) {
  if (T == 0) return 0.0;
  auto* row_loss = static_cast<double*>(c.scratch->get(kRowLoss, size_t(T) * sizeof(double)));
  auto* result = static_cast<double*>(c.scratch->get(kReduce, 2 * sizeof(double)));
  int* flags = reinterpret_cast<int*>(result + 1);
  BHASA_CUDA_CHECK(cudaMemsetAsync(flags, 0, sizeof(int), c.stream));
  xent_kernel<<<T, kThreads, 0, c.stream>>>(V, logits, ldl, targets, dlogits_scale, row_loss, flags);
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
