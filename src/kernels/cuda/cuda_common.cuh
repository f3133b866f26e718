// Shared by the CUDA kernel files: error checking, the per-backend context (one
// stream, grow-once scratch), and the host-side entry point of each kernel family.
// Semantics, shapes and strides are those of kernels.h; these functions only launch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/kernels.h"

namespace bhasa::cuda {

// Every CUDA runtime call goes through this: a failure becomes a bhasa::Error.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err) +
                "; check the GPU is present and not out of memory (nvidia-smi)");
}
#define BHASA_CUDA_CHECK(call) ::bhasa::cuda::check_cuda((call), #call)
// After each launch: catches bad launch configurations at once (not async faults).
#define BHASA_LAUNCH_CHECK(name) ::bhasa::cuda::check_cuda(cudaGetLastError(), name)

inline unsigned blocks_for(size_t n, unsigned threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}
// A pointer that 16-byte (float4, cp.async, bulk copy) accesses may use.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Named scratch buffers that only ever grow: after the first step of a given shape,
// no kernel family allocates again.
enum ScratchSlot {
  kNormPartials, kConvPartials, kScanPartials, kScanParamPartials, kSortKeys, kSortVals,
  kSortTemp, kRowLoss, kReduce, kHostResult, kDecodeA, kDecodeStats, kSampleVal, kSampleIdx,
  kSampleCounter, kDecodeA16, kDecodeNext16, kDecodeNextSS, kDecodeXPart, kHeadLogits, kHeadPickKeys, kHeadPickDone, kScanWide0, kScanWide1, kScanWide2, kScanWide3, kScanWide4, kScanWide5,
  kNumSlots
};

class Scratch {
 public:
  ~Scratch() {
    for (auto& b : bufs_) if (b.first) cudaFree(b.first);
  }
  // Grow-only device buffer for a slot (contents are undefined after a growth, or
  // zeros when zeroed: for counters that the kernels using them leave at zero).
  void* get(ScratchSlot slot, size_t bytes, bool zeroed = false) {
    auto& b = bufs_[slot];
    if (b.second < bytes) {
      if (b.first) BHASA_CUDA_CHECK(cudaFree(b.first));
      b.first = nullptr;
      b.second = 0;
      if (cudaMalloc(&b.first, bytes) != cudaSuccess)
        throw Error("out of GPU memory allocating " + std::to_string(bytes >> 20) +
                    " MiB of kernel scratch; use a smaller batch size or sequence length");
      b.second = bytes;
      ++generation_;
      if (zeroed) BHASA_CUDA_CHECK(cudaMemset(b.first, 0, bytes));
    }
    return b.first;
  }
  // Counts the (re)allocations: a graph captured before the last one may hold a freed address.
  uint64_t generation() const { return generation_; }

 private:
  std::vector<std::pair<void*, size_t>> bufs_ = std::vector<std::pair<void*, size_t>>(kNumSlots, {nullptr, 0});
  uint64_t generation_ = 0;
};

struct Ctx {
  cudaStream_t stream = nullptr;
  Scratch* scratch = nullptr;
  double* host_result = nullptr;  // pinned (4 doubles): reductions return through here
  int sm_count = 132;
  bool pdl = true;  // launch the decode kernels with programmatic dependent launch
};

// Programmatic dependent launch (sm_90). A kernel launched with pdl = true may start
// while the previous kernel in the stream still runs; it must call pdl_wait() before
// touching anything that kernel writes (it may read constant inputs, e.g. weights,
// before). pdl_trigger() lets the next such kernel start. Both are no-ops otherwise.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;"); }

// cluster_x > 1: thread-block clusters of cluster_x blocks along x (it divides grid.x).
template <typename... Params, typename... Args>
void launch_clustered(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                      bool pdl, int cluster_x, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x, attr[n].val.clusterDim.y = 1, attr[n].val.clusterDim.z = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...), "cudaLaunchKernelEx");
}
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            bool pdl, Args... args) {
  launch_clustered(kernel, grid, block, smem, stream, pdl, 1, args...);
}

// ---- kernel families (one .cu each) -------------------------------------------
void embedding_forward(Ctx& c, int T, int D, const int32_t* ids, const float* table, float* out);
void embedding_backward(Ctx& c, int T, int D, int V, const int32_t* ids, const float* dout,
                        float* dtable);
// A decode step's embedding (B rows) that also writes the first mixer's norm prepared:
// a16 (B, D) bf16 = out * g and ss (B) = each row's sum of squares. False (nothing launched)
// where the operands are not aligned for it (D % 4, 16-byte table, g and out).
bool embedding_prenorm(Ctx& c, int B, int D, const int32_t* ids, const float* table, const float* g, float* out,
                       void* a16, float* ss);

void norm_forward(Ctx& c, int T, int D, bool rms, float eps, const float* x, const float* w,
                  const float* b, Operand out, float* mean, float* rstd);
void norm_backward(Ctx& c, int T, int D, bool rms, ConstOperand dout, const float* x,
                   const float* w, const float* mean, const float* rstd, float* dx, float* dw,
                   float* db, Operand dx_copy);

void conv1d_silu_forward(Ctx& c, int B, int L, int E, int K, ConstOperand x, int ldx,
                         const float* w, const float* bias, Operand out);  // x, out fp32 or bf16
void conv1d_silu_backward(Ctx& c, int B, int L, int E, int K, ConstOperand x, int ldx,
                          const float* w, const float* bias, ConstOperand dout, Operand dx,
                          float* dw, float* dbias);  // x, dout, dx fp32 or bf16
void conv1d_silu_with_state(Ctx& c, int B, int L, int E, int K, const float* x, int ldx,
                            const float* w, const float* bias, float* state, float* out);

// u, dt, z, dout, du, ddt, out, dz: fp32 or bf16 (Backend::scan_forward / scan_backward)
void scan_forward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u,
                  ConstOperand dt, const float* dt_bias, const float* A_log, const float* Bm,
                  const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                  Operand out, float* chunk_states, const float* h0, float* h_last);
void scan_backward(Ctx& c, int B, int L, int E, int N, int chunk, ConstOperand u,
                   ConstOperand dt, const float* dt_bias, const float* A_log, const float* Bm,
                   const float* Cm, int ld_bc, const float* D, ConstOperand z, int ldz,
                   const float* chunk_states, ConstOperand dout, Operand du, Operand ddt,
                   float* dBm, float* dCm, Operand dz, float* dA_log, float* dD,
                   float* ddt_bias);

void swiglu_forward(Ctx& c, int T, int I, const float* f, float* out);
void swiglu_backward(Ctx& c, int T, int I, const float* f, const float* dout, float* df);

double cross_entropy(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets,
                     float dlogits_scale);
// cross_entropy's pieces, for callers that run it on chunks of rows (head.cu): the
// kernels write row_loss (T) and set flags[0] when a target is >= V; xent_total then
// adds the row losses in a fixed order and returns the sum (one host synchronisation).
// xent_bf16_rows reads bf16 logits (row stride ldl, a multiple of 8, 16-byte aligned)
// and writes the bf16 gradient over them; softmax and loss in fp32.
void xent_rows(Ctx& c, int T, int V, float* logits, int ldl, const int32_t* targets,
               float dlogits_scale, double* row_loss, int* flags);
void xent_bf16_rows(Ctx& c, int T, int V, void* logits, int ldl, const int32_t* targets,
                    float dlogits_scale, double* row_loss, int* flags);
int* xent_flags(Ctx& c);  // zeroed, on the stream
double xent_total(Ctx& c, int T, int V, const double* row_loss);

class Gemm;
// Backend::head_loss on row chunks of `chunk` rows (head.cu). W16: W's bf16 mirror or null.
double head_loss(Ctx& c, Gemm& gemm, int chunk, int T, int V, int D, ConstOperand X, const float* W,
                 const void* W16, const int32_t* targets, float dlogits_scale, Operand dX, float* dW);

// p16: null, or the bf16 copy of p (n) that the same pass rewrites (the weights' mirror)
void adamw(Ctx& c, size_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
           float b2, float eps, float wd, int step, float grad_scale, void* p16 = nullptr);
double sum_squares(Ctx& c, size_t n, const float* g);
void axpy(Ctx& c, size_t n, float alpha, const float* x, float* y);
void dropout(Ctx& c, size_t n, Operand x, float p, uint64_t seed);
// seed: backend memory, two int32 holding the uint64 (read by the kernel)
void dropout(Ctx& c, size_t n, Operand x, float p, const int32_t* seed);

// Decoding (gemv.cu, ssm_step.cu); see kernels.h. gemv: C (M, N) = norm?(A) @ W^T + beta C,
// W (N, K) row-major; norm 0 none, 1 rms, 2 layer (nw, nb as norm_forward).
constexpr int kGemvMaxM = 8;
struct ConvIn {  // gemv's conv staging (ssm_decode_in): state (M, K-1, E), w (E, K), b (E) or null
  const float* state = nullptr;
  const float* w = nullptr;
  const float* b = nullptr;
  int K = 0;
};
bool gemv_serves(int M, int N, int K, const float* A, int lda, const float* W, int ldw,
                 const float* nw, const float* nb);
// w16: W's bf16 mirror (same shape and ldw, weight_mirror.cuh), read instead of W when
// non-null; it needs gemv_w16_serves.
bool gemv_w16_serves(int K, int ldw, const void* w16);
void gemv(Ctx& c, int M, int N, int K, const float* A, int lda, const float* W, int ldw, float beta,
          float* C, int ldc, int norm, float eps, const float* nw, const float* nb,
          const ConvIn& cv = ConvIn{}, const void* w16 = nullptr);
// ssm_decode_in as one gemv with the conv staged in front (B <= 8, d_conv 4)
bool conv_gemv_serves(int B, int E, int K, int P, const float* x, int ldx, const float* state,
                      const float* x_proj);
bool norm_rows_serves(int K, const float* x, const float* nw, const float* nb, const float* out);
void norm_rows(Ctx& c, int M, int K, bool rms, float eps, const float* x, const float* nw,
               const float* nb, float* out);  // norm_forward without mean / rstd, one warp a row
void norm_rows_bf16(Ctx& c, int M, int K, bool rms, float eps, const float* x, const float* nw,
                    const float* nb, void* out);  // the same, out (M, K) bf16
// cuBLASLt's bf16 A for a frozen weight's product (gemv.cu, PDL): A (M, lda) fp32 -> out (M, K)
// bf16 dense; and ssm_decode_in's u = silu(conv(state, x)) -> u (B, E) bf16 (d_conv 4)
bool rows_to_bf16_serves(int K, const float* A, int lda);
void rows_to_bf16(Ctx& c, int M, int K, const float* A, int lda, void* out);
bool conv_rows_serves(int E, int K, const float* x, int ldx, const float* state);
void conv_rows_bf16(Ctx& c, int B, int E, const float* x, int ldx, const ConvIn& cv, void* u);
void conv_decode(Ctx& c, int B, int E, int K, const float* x, int ldx, const float* conv_state,
                 const float* conv_w, const float* conv_b, float* xs);  // u of ssm_decode_in, states untouched
void ssm_decode_step(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z,
                     int ldxz, float* conv_state, const float* conv_w, const float* conv_b,
                     const float* dbc, const float* dt_w, const float* dt_bias,
                     const float* A_log, const float* D, float* h, Operand y);  // y fp32 or bf16
// ssm_decode_step's kernel for many rows (ssm_step_rows.cu): launches it and returns true
// where it serves (B >= 16, d_state % 4 == 0 and <= 32, dt_rank % 4 == 0 and <= 64, d_conv <= 4)
bool ssm_step_rows(Ctx& c, int B, int E, int N, int R, int K, const float* x, const float* z, int ldxz,
                   float* conv_state, const float* conv_w, const float* conv_b, const float* dbc,
                   const float* dt_w, const float* dt_bias, const float* A_log, const float* D, float* h,
                   Operand y);
bool ssm_step_rows_serves(int B, int E, int N, int R, int K, int ldxz, const float* dbc, const float* dt_w,
                          const float* A_log, const float* h);
// The same with u given (x holds silu(conv) already; the conv state untouched): a mixer step
// whose in_proj did the conv (decode_mma_norm_conv), at any B >= 1 (the fused mixer's own
// range); otherwise false where ssm_step_rows would be (ssm_step_rows_u_serves).
// xtiles > 1: in_proj did x_proj too (XProjFold, decode_mma.h): dbc holds its xtiles partials
// (xtiles, B, P), summed here in tile order.
bool ssm_step_rows_u_serves(int B, int E, int N, int R, int K, int ldxz, const float* dbc, const float* dt_w,
                            const float* A_log, const float* h);
bool ssm_step_rows_u(Ctx& c, int B, int E, int N, int R, const float* u, const float* z, int ldxz,
                     const float* dbc, const float* dt_w, const float* dt_bias, const float* A_log, const float* D,
                     float* h, Operand y, int xtiles = 1);

void sample_tokens(Ctx& c, int B, int V, const float* logits, float temperature, uint64_t seed,
                   int32_t* counter, int32_t* ids, int32_t* history, int capacity);

// Operands (kernels.h) on the device: fp32 or bf16 elements. Kernels template their
// stores on the element type O (float or __nv_bfloat16); with_operand calls f with the
// typed pointer.
template <class F>
void with_operand(Operand o, F&& f) {
  if (o.dtype == Dtype::bf16) f(static_cast<__nv_bfloat16*>(o.p));
  else f(static_cast<float*>(o.p));
}
template <class F>
void with_operand(ConstOperand o, F&& f) {  // the same, read-only
  if (o.dtype == Dtype::bf16) f(static_cast<const __nv_bfloat16*>(o.p));
  else f(static_cast<const float*>(o.p));
}
template <class O>
__device__ __forceinline__ O from_float(float v) {
  if constexpr (std::is_same_v<O, float>) return v;
  else return __float2bfloat16_rn(v);
}
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
// Four elements at p (4-element aligned): one 16-byte (fp32) or 8-byte (bf16) access.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162 q[2] = {__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(v.z, v.w)};
  *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(q);
}

// cp.async: a 4-byte copy global -> shared that bypasses registers; ok = false writes 0.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 4 : 0)
               : "memory");
}
// cp.async of 16 bytes (both addresses 16-byte aligned: 4 floats or 8 bf16); ok = false
// writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// waits until at most P of this thread's committed groups are still in flight
template <int P>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(P) : "memory"); }

// torch: dst = src.to(torch.bfloat16)   src (n) fp32, dst (n) bf16, on stream (weight_mirror.cu)
void flat_to_bf16(cudaStream_t stream, const float* src, size_t n, void* dst);

// Device-side math shared by the kernels (accurate libm versions: the tests hold
// these kernels to 1e-5 of the CPU backend).
__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
constexpr float kLog2e = 1.4426950408889634f;
// 2^x on the special-function unit, denormal results flushed to 0 (exp2f adds a
// denormal range fix-up, ~3 instructions per decay; a decay under 2^-126 contributes
// nothing anyway).
__device__ __forceinline__ float ex2_(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// sigmoid(x) = 1 / (1 + exp(-x)) with the approximate divide (2 ulp; sigmoidf_'s IEEE
// divide costs ~10 instructions more): ~1e-7 relative, inside the kernels' 1e-5.
__device__ __forceinline__ float sigmoid_fast(float x) { return __fdividef(1.0f, 1.0f + ex2_(-x * kLog2e)); }
// torch: F.softplus(x) (threshold 20)
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// out[0] = sum(x[0:n]) in a fixed order (one block: strided partials, then a
// tree), so reductions are bitwise repeatable. Launch as <<<1, kThreads>>>.
template <int kThreads>
__global__ void sum_doubles_in_order(int n, const double* x, double* out) {
  __shared__ double part[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += x[i];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (int o = kThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) part[threadIdx.x] += part[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = part[0];
}

// Column sums of part (groups, n) in a fixed order, for reductions over per-block
// partials (dw of norm and conv1d). Launch with dim3(kColSumLanes, kColSumRows)
// threads and blocks_for(n, kColSumLanes) blocks: thread (x, y) adds rows y,
// y + kColSumRows, ... of column blockIdx.x * kColSumLanes + x in row order, then
// the threads with y == 0 add those kColSumRows sums in y order and get the total
// (the others get 0). Several loads per column in flight instead of one chain.
// Every thread of the block must call it (it has barriers).
constexpr int kColSumLanes = 32, kColSumRows = 8;
__device__ __forceinline__ float column_sum_in_order(int n, int groups, const float* part) {
  __shared__ float rows[kColSumRows][kColSumLanes];
  __syncthreads();  // a previous call's readers are done with rows
  const int i = blockIdx.x * kColSumLanes + threadIdx.x;
  float acc = 0.0f;
  if (i < n) {
#pragma unroll 4
    for (int g = threadIdx.y; g < groups; g += kColSumRows) acc += part[size_t(g) * n + i];
  }
  rows[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  float total = 0.0f;
  if (threadIdx.y == 0)
    for (int y = 0; y < kColSumRows; ++y) total += rows[y][threadIdx.x];
  return total;
}

}  // namespace bhasa::cuda
