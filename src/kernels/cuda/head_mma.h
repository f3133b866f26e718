// The tied LM head of a batch decode step on tensor cores (head_mma.cu): the host side, in
// plain C++ so that the labs (g++) can call it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace bhasa::cuda {

// Whether head_mma runs (M, N, K): 1 <= M <= 64, K 256, 512 or 768 (A's fragments live in
// registers), a16, W 16-byte aligned, ldw % 8 == 0, out 16-byte aligned with ldc % 4 == 0.
bool head_mma_serves(int M, int N, int K, const void* a16, const void* W, int ldw, const float* out, int ldc);
// torch: out = (a16.float() @ W.float().T) * rstd[:, None]
//        rstd = 1 / sqrt(ss[:tiles].sum(0) / K + eps)   (rstd = 1 when ss is null)
// a16 (M, K) bf16 dense: the final norm's bf16(x * g) as the last out_proj prepared it
// (decode_mma_next_norm), ss (tiles, ss_ld) its row sums of squares; W (N, K) bf16 row stride
// ldw; out (M, N) fp32 row stride ldc. pdl: the weight's stream starts before the previous
// kernel ends. sm_count: the grid (one block an SM).
// pick: also the greedy next ids, sample_tokens' at temperature 0 (kernels/sampling.h's rule:
// the largest logit, the first of equals; token 0 for a row of NaN): each block's best of
// its columns a row, merged by atomicMax on a 64-bit key a row; the last block to finish (a
// counter) writes ids (M) "=", history (capacity, M) row *counter (while below capacity),
// and *counter += 1. keys (M) and done (1) are scratch, zero before and left at zero.
// logits false: out is not written (a decode loop that wants the ids alone; 12.9 MB a step
// at m130, batch 64).
// next_tile (1) or null: scratch, zero before and left at zero; the weight's tiles are then
// taken in turn by whichever block is ready (blocks that start early, on SMs the previous
// kernel left free, take more), else block b takes tiles b, b + grid, ...
struct HeadPick {
  bool logits = true;
  unsigned* next_tile = nullptr;
  int32_t* counter = nullptr;
  int32_t* ids = nullptr;
  int32_t* history = nullptr;
  int capacity = 0;
  unsigned long long* keys = nullptr;
  unsigned* done = nullptr;
};
// head_mma runs head_wgmma (head_wgmma.cu) where that serves, unless BHASA_HEAD_WGMMA=0.
void head_mma(cudaStream_t stream, bool pdl, int sm_count, int M, int N, int K, const void* a16, const float* ss,
              int tiles, int ss_ld, float eps, const void* W, int ldw, float* out, int ldc,
              const HeadPick* pick = nullptr);

// head_mma's contract on Hopper's wgmma, for 1 <= M <= 64 and K 256, 512 or 768 on a
// compute capability 9.0 device (the library's sm_90a code).
bool head_wgmma_serves(int M, int N, int K, const void* a16, const void* W, int ldw, const float* out, int ldc);
void head_wgmma(cudaStream_t stream, bool pdl, int sm_count, int M, int N, int K, const void* a16, const float* ss,
                int tiles, int ss_ld, float eps, const void* W, int ldw, float* out, int ldc,
                const HeadPick* pick = nullptr);

}  // namespace bhasa::cuda
