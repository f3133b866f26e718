// bf16 mirrors of frozen weights; see weight_mirror.cuh.
#include <cuda_bf16.h>

#include <algorithm>

#include "core/error.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/weight_mirror.cuh"

namespace bhasa::cuda {

namespace {

// torch: dst = src.to(torch.bfloat16)     src (n) fp32, dst (n) bf16; 4 a thread (16-byte loads)
// when src is 16-byte aligned. (gemm.cu's operand copy takes an int column count and
// a row stride; a 130M-parameter flat range needs neither.)
__global__ void flat_to_bf16_kernel(const float* __restrict__ src, size_t n, __nv_bfloat16* __restrict__ dst) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  const size_t n4 = reinterpret_cast<uintptr_t>(src) % 16 == 0 ? n / 4 : 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n4; i += stride) {
    const float4 v = reinterpret_cast<const float4*>(src)[i];
    __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(dst + 4 * i);
    out[0] = __floats2bfloat162_rn(v.x, v.y);
    out[1] = __floats2bfloat162_rn(v.z, v.w);
  }
  for (size_t i = 4 * n4 + blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = __float2bfloat16_rn(src[i]);
}

}  // namespace

WeightMirrors::~WeightMirrors() {
  for (Mirror& m : mirrors_)
    if (m.bf16) cudaFree(m.bf16);
}

void WeightMirrors::freeze(const float* params, size_t n) {
  if (!params || n == 0) return;
  auto it = std::find_if(mirrors_.begin(), mirrors_.end(), [&](const Mirror& m) { return m.base == params; });
  if (it != mirrors_.end() && it->same && it->n == n) {  // rewritten in step (adamw) or unchanged
    it->valid = true;
    return;
  }
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  BHASA_CUDA_CHECK(cudaStreamIsCapturing(stream_, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return;
  if (it == mirrors_.end()) it = mirrors_.insert(mirrors_.end(), Mirror{params});
  Mirror& m = *it;
  m.valid = m.same = false;
  if (n > m.capacity) {
    if (m.bf16) BHASA_CUDA_CHECK(cudaFree(m.bf16));
    m.bf16 = nullptr;
    m.capacity = 0;
    if (cudaMalloc(&m.bf16, n * sizeof(__nv_bfloat16)) != cudaSuccess) {
      cudaGetLastError();
      mirrors_.erase(it);  // no room for a copy: decoding reads the fp32 weights, as in tf32 mode
      return;
    }
    m.capacity = n;
  }
  m.n = n;
  flat_to_bf16(stream_, params, n, m.bf16);
  m.valid = m.same = true;
}

void flat_to_bf16(cudaStream_t stream, const float* src, size_t n, void* dst) {
  if (n == 0) return;
  const unsigned blocks = unsigned(std::min<size_t>(blocks_for(n / 4 + 1, 256), 132 * 16));
  flat_to_bf16_kernel<<<blocks, 256, 0, stream>>>(src, n, static_cast<__nv_bfloat16*>(dst));
  BHASA_LAUNCH_CHECK("flat_to_bf16");
}

void* WeightMirrors::rewriting(const float* w, size_t n) {
  void* copy = nullptr;
  for (Mirror& m : mirrors_) {
    if (!copy && m.same && w >= m.base && w + n <= m.base + m.n) {
      m.valid = false;
      copy = static_cast<__nv_bfloat16*>(m.bf16) + (w - m.base);
    } else if (overlaps(m, w, n * sizeof(float))) {
      m.valid = m.same = false;  // any other mirror of these floats is stale now
    }
  }
  return copy;
}

const void* WeightMirrors::find(const float* w, size_t n) const {
  for (const Mirror& m : mirrors_)
    if (m.valid && w >= m.base && w + n <= m.base + m.n)
      return static_cast<const __nv_bfloat16*>(m.bf16) + (w - m.base);
  return nullptr;
}

void WeightMirrors::freed(const void* p) {
  for (auto it = mirrors_.begin(); it != mirrors_.end();) {
    if (it->base == p) {
      BHASA_CUDA_CHECK(cudaFree(it->bf16));
      it = mirrors_.erase(it);
    } else {
      if (overlaps(*it, p, 1)) it->valid = it->same = false;
      ++it;
    }
  }
}

}  // namespace bhasa::cuda
