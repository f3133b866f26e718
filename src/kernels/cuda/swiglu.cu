// Gated MLP activation: the first half of fc1's output gated by SiLU of the second.
#include "kernels/cuda/cuda_common.cuh"

namespace bhasa::cuda {

namespace {

// torch: y, g = f.chunk(2, -1); out = y * F.silu(g)      f (T, 2I), out (T, I)
__global__ void swiglu_forward_kernel(int T, int I, const float* f, float* out) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * I) return;
  const size_t t = i / I, j = i % I;
  const float y = f[t * 2 * I + j], g = f[t * 2 * I + I + j];
  out[i] = y * g * sigmoidf_(g);
}

// dy = dout * silu(g);  dg = dout * y * silu'(g),  silu'(g) = s (1 + g (1 - s))    df (T, 2I) "="
__global__ void swiglu_backward_kernel(int T, int I, const float* f, const float* dout, float* df) {
  const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
  if (i >= size_t(T) * I) return;
  const size_t t = i / I, j = i % I;
  const float y = f[t * 2 * I + j], g = f[t * 2 * I + I + j], d = dout[i];
  const float s = sigmoidf_(g);
  df[t * 2 * I + j] = d * g * s;
  df[t * 2 * I + I + j] = d * y * s * (1.0f + g * (1.0f - s));
}

}  // namespace

void swiglu_forward(Ctx& c, int T, int I, const float* f, float* out) {
  const size_t n = size_t(T) * I;
  if (n == 0) return;
  swiglu_forward_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(T, I, f, out);
  BHASA_LAUNCH_CHECK("swiglu_forward");
}

void swiglu_backward(Ctx& c, int T, int I, const float* f, const float* dout, float* df) {
  const size_t n = size_t(T) * I;
  if (n == 0) return;
  swiglu_backward_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(T, I, f, dout, df);
  BHASA_LAUNCH_CHECK("swiglu_backward");
}

}  // namespace bhasa::cuda
