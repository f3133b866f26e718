// Hopper's warpgroup MMA (wgmma) with both operands in shared memory, 128-byte swizzled and
// K-major, as the decode products (decode_mma.cu) and the head (head_wgmma.cu) use it.
// The swizzled layout: a matrix of R rows x K (bf16) is K / 64 blocks of R rows x 128 bytes
// (64 k), R * 128 bytes apart; inside a block the 16-byte chunk c of row r sits at chunk
// c ^ (r % 8) (the 1024-byte atoms of 8 rows must start 1024-aligned). A k16 step j of a
// 64-row slice starting at row r0 is the descriptor at block j / 4, row r0, + 32 (j % 4) bytes.
#pragma once
#include <cstdint>

// a device pass without wgmma (the compute_90 PTX): wgmma code compiles to nothing there,
// and the host picks it only on a compute capability 9.0 device (device_runs_sm90a)
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BHASA_WGMMA_COMPILED 0
#else
#define BHASA_WGMMA_COMPILED 1
#endif

namespace bhasa::cuda {

// Whether this process's device runs the library's sm_90a code (compute capability 9.0;
// newer GPUs get the compute_90 PTX, which has no wgmma).
bool device_runs_sm90a();

// generic-proxy writes to shared memory (st.shared, cp.async) made visible to wgmma's reads
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

#if BHASA_WGMMA_COMPILED
// wgmma's shared-memory matrix descriptor: start >> 4 (bits 0-13), leading offset (unused by a
// swizzled K-major operand) 16-29, stride offset >> 4 (1024: the next 8 rows) 32-45, layout 1
// (128-byte swizzle) in bits 62-63
__device__ __forceinline__ uint64_t sw128_desc(unsigned addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// keeps the compiler from moving accumulators across the asynchronous products
template <int NF>
__device__ __forceinline__ void fence_operands(float* d) {
#pragma unroll
  for (int e = 0; e < NF; ++e) asm volatile("" : "+f"(d[e])::"memory");
}

// d (64 x 16 MT: this warp's 16 rows, as MT x 2 mma.sync m16n8 accumulators) += a (64 x 16)
// b^T, b (16 MT x 16); a and b descriptors of K-major swizzled tiles
template <int MT>
__device__ __forceinline__ void wgmma_ss(float (&d)[2 * MT][4], uint64_t a, uint64_t b);
template <>
__device__ __forceinline__ void wgmma_ss<1>(float (&d)[2][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3])
      : "l"(a), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_ss<2>(float (&d)[4][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3])
      : "l"(a), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_ss<3>(float (&d)[6][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23}, %24, %25, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3])
      : "l"(a), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_ss<4>(float (&d)[8][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(a), "l"(b));
}
#endif  // BHASA_WGMMA_COMPILED

}  // namespace bhasa::cuda
