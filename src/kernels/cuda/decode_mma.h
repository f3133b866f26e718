// A bf16 tensor-core GEMM for decoding at 8 < M <= 64 rows (decode_mma.cu): the host side,
// in plain C++ so that the labs (g++) can call it. See decode_mma.cu for the design.
#pragma once
#include <cuda_runtime.h>

namespace bhasa::cuda {

constexpr int kMmaMaxM = 64;

// A block's tile: bn weight rows (16, 32, 64 or 128) x a K slice; split K slices summed by
// a thread-block cluster (1..8); wk warps along the slice. 0: decode_mma_pick's choice.
// load: how the operands reach shared memory, bits: 1 A by 16-byte cp.async from every
// thread (else one bulk copy a row), 2 the same for the weight, 4 the next kernel (PDL)
// let start only after the products, not at the start, 8 the products on mma.sync where
// wgmma would serve (decode_mma.cu: use_wgmma); -1: the pick's.
// rows: A's rows a block multiplies (a multiple of 16, at most 64; 0: the pick's, all M up to
// 16 rows, else 16 or 32), the rest by other blocks (grid z) that read the same weight tile
// again, through L2.
struct MmaTile {
  int bn = 0, split = 0, wk = 0, load = -1, rows = 0;
};

// The tile decode_mma uses for (M, N, K) when given none.
MmaTile decode_mma_pick(int M, int N, int K);
// A (M, K) bf16 dense, W (N, K) bf16 row stride ldw, C (M, N) fp32 row stride ldc:
// 0 < M <= 64, K % 16 == 0, ldw % 8 == 0, A and W 16-byte aligned.
// (serves: for that tile, default the pick's)
bool decode_mma_serves(int M, int N, int K, const void* A, const void* W, int ldw, MmaTile tile = MmaTile{});
// torch: C = A @ W.T + beta * C   (C not read when beta == 0). pdl: launched with
// programmatic dependent launch (the weight copies start before the previous kernel ends).
void decode_mma(cudaStream_t stream, bool pdl, int M, int N, int K, const void* A, const void* W, int ldw,
                float beta, float* C, int ldc, MmaTile tile = MmaTile{});
// norm_gemm with RMSNorm folded in: torch: C = F.rms_norm(x, (K,), g, eps) @ W.T   x (M, ldx)
// fp32 (ldx % 4 == 0, 16-byte aligned), g (K); A is bf16(x * g), each row scaled by its rstd
// after the product.
bool decode_mma_norm_serves(int M, int N, int K, const float* x, int ldx, const float* g, const void* W, int ldw,
                            MmaTile tile = MmaTile{});
void decode_mma_norm(cudaStream_t stream, bool pdl, int M, int N, int K, const float* x, int ldx, const float* g,
                     float eps, const void* W, int ldw, float* C, int ldc, MmaTile tile = MmaTile{});
// decode_mma_norm as a decode step's in_proj (N = 2E) with the step's causal conv folded in:
// outputs [0, E) of each row become u = silu(conv_b + conv_w . [state, s]) (fp32 in C, and
// bf16 in u16 (M, E) dense) and the conv state (M, 3, E) fp32 takes s; outputs [E, 2E) are
// decode_mma_norm's. d_conv 4; conv_w (E, 4), conv_b (E) or null, 16-byte aligned.
// x_proj folded into in_proj's conv epilogue (decode_mma_{norm,prenorm}_conv with an XProjFold):
// each column tile t left of E multiplies the u it just made (its rows, bf16) by W_x's columns
// of the tile, part[t] (M, P) fp32 = u[:, tile t] @ W_x[:, tile t].T, and u16 is not written;
// the scan step sums the E / bn tiles in order (ssm_step_rows_u with xtiles).
struct XProjFold {
  const void* w = nullptr;  // W_x (P, E) bf16 dense, 16-byte aligned
  int P = 0;                // its rows (dt_rank + 2 d_state), at most 128
  float* part = nullptr;    // (tiles, M, P) fp32: decode_mma_xproj_tiles
};
// The partials' tiles (E / bn) of in_proj's tile for (M, E, K), or 0 when x_proj cannot be
// folded into it (E not a multiple of its columns, P over 128, or shared memory).
int decode_mma_xproj_tiles(int M, int E, int K, int P, MmaTile tile = MmaTile{});
bool decode_mma_norm_conv_serves(int M, int E, int K, const float* x, int ldx, const float* g, const void* W,
                                 int ldw, const float* C, int ldc, int d_conv, const float* conv_w,
                                 const float* conv_b, const float* conv_state, MmaTile tile = MmaTile{});
void decode_mma_norm_conv(cudaStream_t stream, bool pdl, int M, int E, int K, const float* x, int ldx,
                          const float* g, float eps, const void* W, int ldw, float* C, int ldc, const float* conv_w,
                          const float* conv_b, float* conv_state, void* u16, MmaTile tile = MmaTile{},
                          const XProjFold* xp = nullptr);
// A decode step's RMSNorm split across two products, so that in_proj stages a plain bf16 A:
// decode_mma_next_norm is out_proj (C = A @ W.T + C, the residual stream x) that also writes
// the next in_proj's A, a16 (M, N) = bf16(x * g_next), and ss (tiles, M): each row's sum of
// x^2 over one of the product's column tiles; it returns tiles. decode_mma_prenorm_conv is
// decode_mma_norm_conv reading those: A = a16, rstd = 1 / sqrt(sum over tiles of ss / K + eps).
bool decode_mma_next_norm_serves(int M, int N, int K, const void* A, const void* W, int ldw, const float* C, int ldc,
                                 const float* g_next, MmaTile tile = MmaTile{});
int decode_mma_next_norm(cudaStream_t stream, bool pdl, int M, int N, int K, const void* A, const void* W, int ldw,
                         float* C, int ldc, const float* g_next, void* a16, float* ss, MmaTile tile = MmaTile{});
bool decode_mma_prenorm_conv_serves(int M, int E, int K, const void* a16, const void* W, int ldw, const float* C,
                                    int ldc, int d_conv, const float* conv_w, const float* conv_b,
                                    const float* conv_state, MmaTile tile = MmaTile{});
void decode_mma_prenorm_conv(cudaStream_t stream, bool pdl, int M, int E, int K, const void* a16, const float* ss,
                             int tiles, float eps, const void* W, int ldw, float* C, int ldc, const float* conv_w,
                             const float* conv_b, float* conv_state, void* u16, MmaTile tile = MmaTile{},
                             const XProjFold* xp = nullptr);

}  // namespace bhasa::cuda
