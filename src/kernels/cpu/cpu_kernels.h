// The CPU kernels, templated on the scalar type. CpuBackend (cpu_backend.cpp) calls
// the float instantiations; the tests also run the double ones, so that central
// finite differences in float64 check the very same backward code.
// Semantics, shapes and strides are those documented in kernels.h; each family
// file (gemm.cpp, norm.cpp, ...) defines its templates and instantiates them for
// float and double.
//
// Threading: OpenMP with static schedules. Every reduction across threads goes
// through per-thread partial buffers summed in thread order, or is partitioned so
// that one thread owns each output, so results are bitwise reproducible for a
// fixed thread count.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace bhasa::cpu {

// Grow-only scratch: resizes only when too small, so steady-state calls allocate nothing.
template <class T>
inline T* scratch(std::vector<T>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// C (M, N) = op(A) @ op(B) + beta * C   (cblas_sgemm / cblas_dgemm, row-major)
template <class T>
void gemm(bool ta, bool tb, int M, int N, int K, const T* A, int lda, const T* B, int ldb,
          T beta, T* C, int ldc);

// out (T, D) = table[ids];  dtable (V, D) += scatter of dout by ids
template <class T>
void embedding_forward(int n_tok, int D, const int32_t* ids, const T* table, T* out);
template <class T>
void embedding_backward(int n_tok, int D, int V, const int32_t* ids, const T* dout, T* dtable);

// RMSNorm (rms) or LayerNorm; see kernels.h. mean may be null when rms.
template <class T>
void norm_forward(int n_tok, int D, bool rms, T eps, const T* x, const T* w, const T* b, T* out,
                  T* mean, T* rstd);
template <class T>
void norm_backward(int n_tok, int D, bool rms, const T* dout, const T* x, const T* w,
                   const T* mean, const T* rstd, T* dx, T* dw, T* db);

// Causal depthwise conv1d + SiLU; see kernels.h.
template <class T>
void conv1d_silu_forward(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                         const T* bias, T* out);
// With history for generation: state (B, K-1, E), oldest first, updated in place.
template <class T>
void conv1d_silu_with_state(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                            const T* bias, T* state, T* out);
template <class T>
void conv1d_silu_backward(int B, int L, int E, int K, const T* x, int ldx, const T* w,
                          const T* bias, const T* dout, T* dx, T* dw, T* dbias);

// Selective scan; see kernels.h. dt_bias and D must be non-null.
// h0 and h_last may be the same buffer (in-place state update for generation).
template <class T>
void scan_forward(int B, int L, int E, int N, int chunk, const T* u, const T* dt,
                  const T* dt_bias, const T* A_log, const T* Bm, const T* Cm, int ld_bc,
                  const T* D, const T* z, int ldz, T* out, T* chunk_states, const T* h0,
                  T* h_last);
template <class T>
void scan_backward(int B, int L, int E, int N, int chunk, const T* u, const T* dt,
                   const T* dt_bias, const T* A_log, const T* Bm, const T* Cm, int ld_bc,
                   const T* D, const T* z, int ldz, const T* chunk_states, const T* dout,
                   T* du, T* ddt, T* dBm, T* dCm, T* dz, T* dA_log, T* dD, T* ddt_bias);

// One decode step, fused (decode_step.cpp); see kernels.h.
template <class T>
void norm_gemm(int M, int N, int K, bool rms, T eps, const T* x, const T* w, const T* b,
               const T* W, T* out);
template <class T>
void ssm_decode_in(int B, int E, int K, int P, const T* x, int ldx, const T* conv_state,
                   const T* conv_w, const T* conv_b, const T* x_proj, T* dbc);
template <class T>
void ssm_decode_step(int B, int E, int N, int R, int K, const T* x, const T* z, int ldxz,
                     T* conv_state, const T* conv_w, const T* conv_b, const T* dbc, const T* dt_w,
                     const T* dt_bias, const T* A_log, const T* D, T* h, T* y);

// out (T, I) = f[:, :I] * silu(f[:, I:]);  df (T, 2I) "="
template <class T>
void swiglu_forward(int n_tok, int I, const T* f, T* out);
template <class T>
void swiglu_backward(int n_tok, int I, const T* f, const T* dout, T* df);

// Sum over valid rows of logsumexp(logits) - logits[target]; in-place dlogits when
// dlogits_scale != 0. Throws Error for a target >= V.
template <class T>
double cross_entropy(int n_tok, int V, T* logits, int ldl, const int32_t* targets,
                     T dlogits_scale);

// AdamW step as documented in kernels.h (step >= 1).
template <class T>
void adamw(size_t n, T* p, const T* g, T* m, T* v, T lr, T b1, T b2, T eps, T wd, int step,
           T grad_scale);
template <class T>
double sum_squares(size_t n, const T* g);
template <class T>
void axpy(size_t n, T alpha, const T* x, T* y);

// x[i] *= keep(seed, i) ? 1/(1-p) : 0 in place (kernels/dropout.h's mask); p = 0: no-op.
template <class T>
void dropout(size_t n, T* x, float p, uint64_t seed);

}  // namespace bhasa::cpu
