// The CUDA backend's factory (plain C++: tests and tools include it without CUDA
// headers). make_backend("cuda") calls make_cuda_backend() with default options.
#pragma once
#include <memory>
#include <string>

#include "kernels/kernels.h"

namespace bhasa {

// How GEMMs multiply. Accumulation is always fp32; storage is fp32 except, in bf16 mode,
// the GEMM-operand activations (Backend::operand_dtype, kernels.h).
enum class GemmMath {
  fp32,       // full fp32 products: for tests that compare with the CPU tightly
  tf32,       // TF32 tensor cores (10-bit mantissa products)
  bf16,       // bf16 operands (activations stored so, fp32 ones copied per call), bf16 tensor cores
  bf16_fast,  // cuBLASLt's CUBLAS_COMPUTE_32F_FAST_16BF: fp32 operands, bf16 tensor cores
};
const char* gemm_math_name(GemmMath m);
// "fp32" | "tf32" | "bf16" | "bf16_fast"; throws Error naming the choices otherwise.
GemmMath parse_gemm_math(const std::string& s);

struct CudaOptions {
  GemmMath gemm = GemmMath::bf16;  // the default: as accurate as TF32 in training (bench/results), faster
  // Products with at most 8 rows (decoding) through the GEMV kernels, not cuBLASLt.
  bool gemv = true;
  // Decode kernels launched with programmatic dependent launch (overlap with the previous kernel).
  bool pdl = true;
  // In bf16 mode, freeze_weights() keeps a bf16 copy of the weights that the decode
  // GEMMs (at most kDecodeMaxM rows) read instead: half the bytes (weight_mirror.cuh).
  bool bf16_weights = true;
  // Those GEMMs above the GEMV's 8 rows: time cuBLASLt's candidate algorithms on the
  // first call of a shape and keep the fastest (else the heuristic's first).
  bool tune_decode = true;
  // Training products too, those of M N K >= 2^31 (Gemm::kTuneMinMacs): on the m130 step
  // cuBLASLt's first pick is not its fastest (in_proj's forward 0.258 -> 0.209 ms tuned;
  // the step 112.4 -> 110.4 ms).
  bool tune_large = true;
  bool tune_all = false;  // every GEMM shape timed at its first call (BHASA_CUDA_TUNE=all)
  // With bf16_weights, the decode step at 8 < B <= kDecodeMaxM (from B = 2 with the fused
  // mixer) writes y in bf16 (decode_dtype): out_proj reads it as it is, no rounding kernel.
  bool y_bf16 = true;
  // Rows per chunk of the fused training head (head_loss): with bf16 GEMMs a chunk's
  // logits are held as bf16, rows x V (1.65 GB at 16384 x 50280). At m130's 32768 x 50280:
  // 12.2 ms per step at 16384, 12.5 at 8192 (bench/cuda_lab/NOTES.md).
  int head_chunk = 16384;
  // A training plan's forward stack and backward as CUDA graphs (Backend::graphs_for_training).
  bool train_graphs = true;
  // The decode products with a frozen weight (bf16 A) at M <= decode_mma_max_m rows on our
  // own tensor-core GEMM (decode_mma.cu, PDL, split-K by clusters) instead of cuBLASLt:
  // 0 off, 1 all, 2 all but the head (N > 8192). Measured on the H200 (bench/cuda_lab/NOTES.md,
  // dgemm3 and session 7): B = 16 decodes 0.588 -> 0.437 ms a step, B = 32 0.551 -> 0.496
  // (blocks of 16 rows); at B = 64 cuBLASLt is as fast (0.630 against 0.633) or faster, so
  // the default stops at 32 rows. BHASA_DECODE_MMA and BHASA_DECODE_MMA_MAX_M override these.
  int decode_mma = 2;
  int decode_mma_max_m = 32;
  // A decode step's mixer at 16 <= B <= 64 in 3 or 4 kernels, all on decode_mma and our own
  // (Backend::mixer_decode_step): the norm and the causal conv folded into in_proj
  // (BHASA_FUSED_MIXER=0: off; then the ops above and decode_mma_max_m apply).
  bool fused_mixer = true;
  // There, out_proj prepares the next mixer's RMSNorm (bf16 x * g and row sums of squares), so
  // that the next in_proj stages a plain bf16 A (BHASA_NORM_SPLIT=0: off).
  bool norm_split = true;
  // There, x_proj folded into in_proj's epilogue (per column tile partials, summed by the scan
  // step: one kernel fewer a layer; BHASA_XPROJ_FOLD=0: off).
  bool xproj_fold = true;
};
constexpr int kDecodeMaxM = 64;  // the largest batch read through a frozen weight's mirror

// Throws Error when no CUDA GPU is usable.
std::unique_ptr<Backend> make_cuda_backend();
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& options);
// gemm_math: "fp32" | "tf32" | "bf16" | "bf16_fast", or "" for the default.
std::unique_ptr<Backend> make_cuda_backend(const std::string& gemm_math);
// True when a CUDA GPU is present (never throws).
bool cuda_gpu_available();
// The cudaStream_t (as void*) every call of a CUDA backend runs on, for timing with
// CUDA events (bench/cuda_lab). Throws Error for a backend that is not CUDA.
void* cuda_stream_of(Backend& backend);

}  // namespace bhasa
