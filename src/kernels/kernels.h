// The kernel interface every backend implements. The model (src/model/) is written
// once against it; src/kernels/cpu/ and src/kernels/cuda/ provide the two backends.
//
// Conventions
// - Matrices are row-major. T = B*L tokens; a (B, L, X) activation is a (T, X) matrix.
// - Pointers are in the backend's memory (host for CPU, device for CUDA).
// - "+=" outputs accumulate into what is there; "=" outputs overwrite.
// - A row stride (ld) is given wherever a kernel reads a column slice of a wider
//   matrix, e.g. x and z are the two halves of in_proj's (T, 2*d_inner) output.
// - Kernels are deterministic for a fixed thread count (no atomics in reductions).
// - Storage is fp32, except the activations that GEMMs, the conv and the scan read
//   (and their gradients in_proj's dY, dt_proj's dY, out_proj's dX): those are Operands,
//   in the backend's operand_dtype() (bf16 for the CUDA backend's bf16 GEMMs, so the
//   producing kernels round once and the consumers read them without a copy).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"

namespace bhasa {

enum class Dtype { f32, bf16 };
inline size_t dtype_bytes(Dtype d) { return d == Dtype::bf16 ? 2 : 4; }

// A typed pointer to an activation a GEMM reads (fp32 or bf16). A float* converts to an
// fp32 Operand, so fp32 callers pass plain pointers. + offsets by elements.
struct Operand {
  void* p = nullptr;
  Dtype dtype = Dtype::f32;
  Operand() = default;
  Operand(float* f) : p(f) {}
  Operand(void* q, Dtype d) : p(q), dtype(d) {}
  Operand operator+(size_t i) const { return {static_cast<char*>(p) + i * dtype_bytes(dtype), dtype}; }
  // The fp32 pointer, for a kernel that has no bf16 path (the CPU backend).
  float* f32() const {
    if (dtype != Dtype::f32) throw Error("a bf16 activation reached a kernel that reads fp32 only");
    return static_cast<float*>(p);
  }
};
struct ConstOperand {  // the same, read-only
  const void* p = nullptr;
  Dtype dtype = Dtype::f32;
  ConstOperand() = default;
  ConstOperand(const float* f) : p(f) {}
  ConstOperand(const Operand& o) : p(o.p), dtype(o.dtype) {}
  ConstOperand(const void* q, Dtype d) : p(q), dtype(d) {}
  ConstOperand operator+(size_t i) const {
    return {static_cast<const char*>(p) + i * dtype_bytes(dtype), dtype};
  }
  const float* f32() const {
    if (dtype != Dtype::f32) throw Error("a bf16 activation reached a kernel that reads fp32 only");
    return static_cast<const float*>(p);
  }
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory -------------------------------------------------------------
  virtual float* alloc(size_t n) = 0;  // n floats, zeroed
  virtual void free(void* p) = 0;
  virtual int32_t* alloc_i32(size_t n) = 0;
  virtual void upload(float* dst, const float* src, size_t n) = 0;      // host -> backend
  virtual void download(float* dst, const float* src, size_t n) = 0;    // backend -> host
  virtual void upload_i32(int32_t* dst, const int32_t* src, size_t n) = 0;
  virtual void zero(float* p, size_t n) = 0;
  void zero_operand(Operand o, size_t n) {  // n elements; alloc_operand's whole buffers
    zero(static_cast<float*>(o.p), (n * dtype_bytes(o.dtype) + sizeof(float) - 1) / sizeof(float));
  }
  virtual void copy(float* dst, const float* src, size_t n) = 0;        // within backend
  virtual void synchronize() {}
  // The dtype the GEMM-operand activations are stored in (see Operand), and an
  // allocation of n such elements (zeroed; release with free()).
  virtual Dtype operand_dtype() const { return Dtype::f32; }
  Operand alloc_operand(size_t n, Dtype d) {
    return {alloc((n * dtype_bytes(d) + sizeof(float) - 1) / sizeof(float)), d};
  }

  // ---- GEMM ---------------------------------------------------------------
  // C (M, N) = op(A) (M, K) @ op(B) (K, N) + beta * C,  op(X) = X^T when trans.
  // torch: C = beta * C + (A.T if ta else A) @ (B.T if tb else B)
  // A and B fp32 or operand_dtype(); C fp32, or operand_dtype() (an activation the
  // next kernels read: rounded once from the fp32 accumulators).
  virtual void gemm(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda,
                    ConstOperand B, int ldb, float beta, Operand C, int ldc) = 0;
  // The residual add into another buffer: C (M, N) = R + op(A) @ op(B), R and C fp32 with
  // row stride ldc (R may be C). A training plan keeps each sublayer's input, so its
  // output goes elsewhere; a backend that can read R while it writes C saves the copy.
  // torch: C = R + (A.T if ta else A) @ (B.T if tb else B)
  virtual void gemm_residual(bool ta, bool tb, int M, int N, int K, ConstOperand A, int lda,
                             ConstOperand B, int ldb, const float* R, float* C, int ldc) {
    if (R != C) copy(C, R, size_t(M - 1) * ldc + N);
    gemm(ta, tb, M, N, K, A, lda, B, ldb, 1.0f, C, ldc);
  }

  // A linear layer's backward. For Y (T, O) = X (T, I) @ W^T, W (O, I):
  // torch: dX = beta_dx * dX + dY @ W;  dW += dY.T @ X
  // dY (T, O) row stride ldy; W and dW (O, I) row stride ldw; X (T, I) row stride ldx;
  // dX (T, I) row stride lddx. One call so that a backend can prepare dY once for both
  // products (the CUDA backend's bf16 copy of it). dY, X and dX fp32 or operand_dtype().
  virtual void linear_backward(int T, int O, int I, ConstOperand dY, int ldy, const float* W, int ldw,
                               ConstOperand X, int ldx, float beta_dx, Operand dX, int lddx, float* dW) {
    gemm(false, false, T, I, O, dY, ldy, W, ldw, beta_dx, dX, lddx);
    gemm(true, false, O, I, T, dY, ldy, X, ldx, 1.0f, dW, ldw);
  }

  // ---- embedding ----------------------------------------------------------
  // out = table[ids]                       ids (T), table (V, D), out (T, D)
  virtual void embedding_forward(int T, int D, const int32_t* ids, const float* table, float* out) = 0;
  // dtable[ids[t]] += dout[t]              dtable (V, D) +=
  virtual void embedding_backward(int T, int D, int V, const int32_t* ids, const float* dout, float* dtable) = 0;

  // ---- norms --------------------------------------------------------------
  // rms:   out = x * rsqrt(mean(x^2) + eps) * w
  // layer: out = (x - mean) * rsqrt(var + eps) * w + b
  // x (T, D), w (D), b (D) or null for rms, out (T, D) (fp32 or operand_dtype()),
  // mean (T) (unused for rms), rstd (T).
  virtual void norm_forward(int T, int D, bool rms, float eps, const float* x, const float* w,
                            const float* b, Operand out, float* mean, float* rstd) = 0;
  // dx (T, D) +=  (so the residual stream's gradient passes straight through),
  // dw (D) +=, db (D) += (null for rms). dx_copy (T, D) (fp32 or operand_dtype()) or
  // null: receives the updated dx too, for the GEMM that reads it next.
  virtual void norm_backward(int T, int D, bool rms, ConstOperand dout, const float* x,
                             const float* w, const float* mean, const float* rstd, float* dx,
                             float* dw, float* db, Operand dx_copy = {}) = 0;

  // ---- causal depthwise conv1d + SiLU ---------------------------------------
  // torch: out = F.silu(F.conv1d(x.transpose(1,2), w, bias, padding=K-1, groups=E)[..., :L]).transpose(1,2)
  // x (B, L, E) with row stride ldx, w (E, K), bias (E) or null, out (B, L, E) dense;
  // x and out fp32 or operand_dtype()
  virtual void conv1d_silu_forward(int B, int L, int E, int K, ConstOperand x, int ldx,
                                   const float* w, const float* bias, Operand out) = 0;
  // Recomputes the pre-activation. dx (B, L, E) row stride ldx, "=" (fp32 or
  // operand_dtype(): it is half of in_proj's dY); dw (E, K) +=, dbias (E) +=; x as forward;
  // dout (B, L, E) dense, fp32 or operand_dtype()
  virtual void conv1d_silu_backward(int B, int L, int E, int K, ConstOperand x, int ldx,
                                    const float* w, const float* bias, ConstOperand dout,
                                    Operand dx, float* dw, float* dbias) = 0;

  // The same with history, for inference: state (B, K-1, E) holds the previous K-1
  // inputs (zeros at the start of a sequence) and is updated in place to the last
  // K-1 inputs of [state, x]. x (B, L, E) row stride ldx; out (B, L, E) dense.
  virtual void conv1d_silu_with_state(int B, int L, int E, int K, const float* x, int ldx,
                                      const float* w, const float* bias, float* state,
                                      float* out) = 0;

  // ---- selective scan -------------------------------------------------------
  // delta[t,e] = softplus(dt[t,e] + dt_bias[e]);  A = -exp(A_log)
  // h[t,e,n]   = exp(delta[t,e] * A[e,n]) * h[t-1,e,n] + delta[t,e] * Bm[t,n] * u[t,e]
  // out[t,e]   = (sum_n Cm[t,n] * h[t,e,n] + D[e] * u[t,e]) * silu(z[t,e])
  // u, dt (B, L, E) dense; Bm, Cm (B, L, N) with row stride ld_bc; z (B, L, E) row stride ldz;
  // dt_bias, D (E); A_log (E, N); out (B, L, E) dense, fp32 or operand_dtype().
  // u, dt, z fp32 or operand_dtype() (the bf16 activations of a bf16 training plan).
  // chunk_states (B, n_chunks, E, N), n_chunks = ceil(L / chunk): the state h at the
  // *start* of each chunk, so the backward pass can recompute within a chunk.
  // May be null (inference): then nothing is saved.
  // h0 (B, E, N) initial state or null for zeros; h_last (B, E, N) final state or null.
  // h0 and h_last may be the same buffer (decoding updates the state in place).
  // The chunk length this backend's scan runs best at: a shorter chunk saves more
  // states (B * ceil(L / chunk) * E * N floats per layer) and recomputes less in backward.
  virtual int scan_chunk() const { return 64; }
  virtual void scan_forward(int B, int L, int E, int N, int chunk, ConstOperand u,
                            ConstOperand dt, const float* dt_bias, const float* A_log,
                            const float* Bm, const float* Cm, int ld_bc, const float* D,
                            ConstOperand z, int ldz, Operand out, float* chunk_states,
                            const float* h0, float* h_last) = 0;
  // "=" for du, ddt, dBm, dCm, dz (same strides as the inputs; du, ddt, dz fp32 or
  // operand_dtype()); "+=" for dA_log (E, N), dD (E), ddt_bias (E). u, dt, z, dout as forward.
  virtual void scan_backward(int B, int L, int E, int N, int chunk, ConstOperand u,
                             ConstOperand dt, const float* dt_bias, const float* A_log,
                             const float* Bm, const float* Cm, int ld_bc, const float* D,
                             ConstOperand z, int ldz, const float* chunk_states,
                             ConstOperand dout, Operand du, Operand ddt, float* dBm, float* dCm,
                             Operand dz, float* dA_log, float* dD, float* ddt_bias) = 0;

  // ---- gated MLP activation -------------------------------------------------
  // torch: y, g = f.chunk(2, -1); out = y * F.silu(g)     f (T, 2I), out (T, I)
  virtual void swiglu_forward(int T, int I, const float* f, float* out) = 0;
  // df (T, 2I) "="
  virtual void swiglu_backward(int T, int I, const float* f, const float* dout, float* df) = 0;

  // ---- cross-entropy --------------------------------------------------------
  // Per row t with target[t] >= 0: loss[t] = logsumexp(logits[t]) - logits[t, target[t]].
  // Rows with target < 0 are ignored (loss 0, gradient 0). logits (T, V) row stride ldl.
  // When dlogits_scale != 0, logits is overwritten in place by
  // dlogits = (softmax(logits) - onehot(target)) * dlogits_scale.
  // Returns the sum of losses over valid rows (as double, on the host).
  virtual double cross_entropy(int T, int V, float* logits, int ldl, const int32_t* targets,
                               float dlogits_scale) = 0;

  // ---- the training head: the tied LM head and its loss, with their gradients ----
  // torch: logits = X @ W.T;  loss = F.cross_entropy(logits, targets, reduction='sum') over
  //        the rows with targets >= 0.  When dlogits_scale != 0, with dlogits = dlogits_scale *
  //        (softmax(logits) - onehot(targets)) (0 on ignored rows):
  //        dX = dlogits @ W  ("=");  dW += dlogits.T @ X
  // X (T, D) (fp32 or operand_dtype()), W (V, D), dX (T, D), dW (V, D) dense; targets (T).
  // Returns the loss sum (host).
  // dlogits_scale = 0: the loss only, dX and dW untouched. One call so that a backend need
  // not hold the (T, V) logits of the whole batch (6.6 GB fp32 at T = 32768, V = 50280).
  // This default runs gemm, cross_entropy and linear_backward on chunks of rows, 64 MB of
  // fp32 logits at a time (one chunk, the same arithmetic as the separate calls, when the
  // batch's logits fit).
  virtual double head_loss(int T, int V, int D, ConstOperand X, const float* W, const int32_t* targets,
                           float dlogits_scale, Operand dX, float* dW) {
    const int rows = std::max(1, std::min(T, int((size_t(1) << 24) / size_t(V))));
    float* logits = alloc(size_t(rows) * V);  // (rows, V)
    double loss = 0.0;
    try {
      for (int t0 = 0; t0 < T; t0 += rows) {
        const int n = std::min(rows, T - t0);
        const ConstOperand x = X + size_t(t0) * D;
        gemm(false, true, n, V, D, x, D, W, D, 0.f, logits, V);
        loss += cross_entropy(n, V, logits, V, targets + t0, dlogits_scale);
        if (dlogits_scale != 0.f)
          linear_backward(n, V, D, logits, V, W, D, x, D, 0.f, dX + size_t(t0) * D, D, dW);
      }
    } catch (...) {
      free(logits);
      throw;
    }
    free(logits);
    return loss;
  }

  // ---- optimizer ------------------------------------------------------------
  // AdamW (decoupled decay): m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  // p -= lr * (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd * p)
  // g is pre-multiplied by grad_scale (for clipping) before use.
  virtual void adamw(size_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
                     float b2, float eps, float wd, int step, float grad_scale) = 0;
  // sum(g^2) over n elements, as double on the host (for global-norm clipping).
  virtual double sum_squares(size_t n, const float* g) = 0;
  // y += alpha * x  (used for residual adds where GEMM's beta cannot be used)
  virtual void axpy(size_t n, float alpha, const float* x, float* y) = 0;

  // ---- dropout --------------------------------------------------------------
  // torch: x = F.dropout(x, p, training=True), in place, with the mask a pure function of
  // (seed, i) (kernels/dropout.h): x[i] *= keep(seed, i) ? 1 / (1 - p) : 0. The same seed
  // gives the same mask on every backend, so backward re-applies it to the gradient.
  // x (n) dense, fp32 or operand_dtype(); p in [0, 1); p = 0 leaves x untouched.
  virtual void dropout(size_t n, Operand x, float p, uint64_t seed) = 0;
  // The same with the seed read from backend memory when the kernel runs: seed points at
  // two int32 holding the uint64 (low word first). A captured graph (the training step's)
  // then draws a new mask each replay from what was uploaded there before it.
  virtual void dropout_at(size_t n, Operand x, float p, const int32_t* seed) = 0;

  // ---- one decode step (L = 1 with states), fused -------------------------------
  // out (M, N) = norm(x) @ W^T with norm as norm_forward (rms, or layer when b), W (N, K)
  // row-major, out dense "=". torch: out = F.rms_norm(x, (K,), w, eps) @ W.T
  virtual void norm_gemm(int M, int N, int K, bool rms, float eps, const float* x, const float* w,
                         const float* b, const float* W, float* out) = 0;
  // The input side of a mixer's SSM, states untouched (conv1d_silu_with_state's u at
  // L = 1, then x_proj):  torch: dbc = F.silu(conv(cat(state, x))) @ x_proj.T
  // x (B, E) row stride ldx; conv_state (B, K-1, E); conv_w (E, K); conv_b (E) or null;
  // x_proj (P, E); dbc (B, P) dense "=".
  virtual void ssm_decode_in(int B, int E, int K, int P, const float* x, int ldx,
                             const float* conv_state, const float* conv_w, const float* conv_b,
                             const float* x_proj, float* dbc) = 0;
  // The rest of the step, per channel (b, e): u as in ssm_decode_in (recomputed), then
  // conv_state takes x (conv1d_silu_with_state's update);
  // delta = softplus(dbc[b, :R] . dt_w[e] + dt_bias[e]); then scan_forward's update of
  // h (B, E, N) in place and y = (C . h + D u) * silu(z).
  // x, z (B, E) row stride ldxz; dbc (B, R + 2N) dense [dt_low | B | C]; dt_w (E, R);
  // dt_bias, D (E); A_log (E, N); y (B, E) dense "=", fp32 or decode_dtype(B).
  virtual void ssm_decode_step(int B, int E, int N, int R, int K, const float* x, const float* z,
                               int ldxz, float* conv_state, const float* conv_w,
                               const float* conv_b, const float* dbc, const float* dt_w,
                               const float* dt_bias, const float* A_log, const float* D,
                               float* h, Operand y) = 0;
  // A whole mixer sublayer of a decode step, where a backend fuses it further than the ops
  // above: x += out_proj(y) with y as ssm_decode_step's after norm_gemm (in_proj) and
  // ssm_decode_in, the conv and SSM states advanced as there. Scratch: xz (B, 2E) fp32,
  // dbc (B, P), y (B, E) in decode_dtype(B); their contents afterwards are the backend's.
  // Returns false, touching nothing, where the backend has no such path (the caller then
  // runs the four ops).
  struct MixerStep {
    int B, D, E, N, R, K;  // batch, d_model, d_inner, d_state, dt_rank, d_conv
    bool rms;
    float eps;
    float* x;  // (B, D), the residual stream, in place
    const float *norm_w, *norm_b, *in_proj, *conv_w, *conv_b, *x_proj, *dt_proj_w, *dt_proj_b, *A_log, *D_skip,
        *out_proj;
    float *conv_state, *h_state;  // (B, K-1, E), (B, E, N)
    float *xz, *dbc;
    Operand y;
    // The next norm reading this x when it is an RMSNorm (the next mixer's, or after the last
    // layer the final norm before the head), else null: a backend may prepare that norm while
    // it writes x.
    const float* next_norm_w = nullptr;
  };
  virtual bool mixer_decode_step(const MixerStep& m) { return false; }
  // A decode step's embedding, out (B, D) = table[ids], by a backend that may also prepare the
  // first mixer's RMSNorm (weight norm_w, or null), as MixerStep::next_norm_w lets out_proj
  // prepare the next. Returns false, touching nothing, where it has no such path (the caller
  // runs embedding_forward).
  virtual bool embedding_decode(int B, int D, const int32_t* ids, const float* table, float* out,
                                const float* norm_w) {
    return false;
  }
  // The dtype a decode step at batch B stores y in (out_proj's A, then read by gemm only):
  // the CUDA backend in bf16 mode answers bf16 for 8 < B <= 64, where out_proj runs on
  // cuBLASLt with the bf16 weight copy, so ssm_decode_step rounds y once and no separate
  // rounding kernel runs before out_proj. f32 elsewhere.
  virtual Dtype decode_dtype(int B) const { return Dtype::f32; }

  // The weights in [params, params + n) will not change until written again through
  // this backend; a backend may keep a lower-precision copy (the CUDA backend in bf16
  // mode: a bf16 copy that the decode ops read, and the GEMMs that run in bf16 anyway
  // instead of rounding the weight per call). Any write into the range drops the copy.
  // Called where decoding starts and by the optimizer after each update; again while
  // nothing was written, it is a check.
  virtual void freeze_weights(const float* params, size_t n) {}

  // ---- decoding on the device (optional; see supports_graphs) -------------------
  // The sampling rule (kernels/sampling.h): per row b, ids[b] = argmax_v of logits[b, v]
  // when temperature <= 0, else of logits[b, v] / temperature + gumbel(seed, step, b, v)
  // (Gumbel-max: a draw from softmax(logits / temperature)), step = *counter.
  // ids (B) "="; history (capacity, B) gets row step; then *counter += 1.
  // logits (B, V) dense; counter (1) and history in backend memory.
  virtual void sample_tokens(int B, int V, const float* logits, float temperature, uint64_t seed,
                             int32_t* counter, int32_t* ids, int32_t* history, int capacity) {
    unsupported("sample_tokens");
  }
  // A decode step's tied head and its next ids at once: norm_gemm(B, V, D, ...) into logits
  // (B, V), then sample_tokens from them. A backend may fuse the two (the CUDA backend picks
  // greedy ids in the head's own kernel) and then leave logits unwritten: the caller wants
  // the ids.
  virtual void head_sample(int B, int V, int D, bool rms, float eps, const float* x, const float* norm_w,
                           const float* norm_b, const float* W, float* logits, float temperature, uint64_t seed,
                           int32_t* counter, int32_t* ids, int32_t* history, int capacity) {
    norm_gemm(B, V, D, rms, eps, x, norm_w, norm_b, W, logits);
    sample_tokens(B, V, logits, temperature, seed, counter, ids, history, capacity);
  }
  virtual void download_i32(int32_t* dst, const int32_t* src, size_t n) {  // backend -> host
    unsupported("download_i32");
  }
  // CUDA graphs: every call between begin and end is recorded instead of run; replay
  // runs the recording again on the same buffers. Only where supports_graphs().
  virtual bool supports_graphs() const { return false; }
  // Whether a training plan may capture its forward stack and backward as graphs too
  // (not while something that cannot live in a graph, such as a profiler, is on).
  virtual bool graphs_for_training() const { return false; }
  virtual void graph_begin_capture() { unsupported("graph capture"); }
  virtual int graph_end_capture() { unsupported("graph capture"); return -1; }  // a handle for graph_replay
  virtual void graph_replay(int graph) { unsupported("graph replay"); }
  // False once the graph may no longer be replayed as captured (the backend moved a buffer
  // it holds): capture again.
  virtual bool graph_current(int graph) const { return true; }
  virtual void graph_destroy(int graph) {}

  // ---- timing ---------------------------------------------------------------
  // mark(k) stamps the point the backend's work has reached (CUDA: an event recorded
  // on the stream, so no synchronisation; CPU: the host clock). seconds(a, b) waits for
  // mark b and returns the time from mark a to it. Slots 0..kTimerSlots-1.
  static constexpr int kTimerSlots = 8;
  virtual void mark(int slot) {
    check_slot(slot);
    host_marks_[slot] = std::chrono::steady_clock::now();
  }
  virtual double seconds(int from, int to) {
    check_slot(from), check_slot(to);
    return std::chrono::duration<double>(host_marks_[to] - host_marks_[from]).count();
  }

 protected:
  void check_slot(int slot) const {
    if (slot < 0 || slot >= kTimerSlots) throw Error("timer slot " + std::to_string(slot) + " out of range");
  }

 private:
  std::chrono::steady_clock::time_point host_marks_[kTimerSlots];
  [[noreturn]] void unsupported(const char* what) const {
    throw Error(std::string(what) + " is not supported by the " + name() +
                " backend; call it only where supports_graphs() is true");
  }
};

std::unique_ptr<Backend> make_cpu_backend();
// device: "cpu", "cuda", or "cuda:<gemm math>" with math fp32 | tf32 | bf16 (the
// products' precision; accumulation stays fp32, and storage but for operand_dtype()).
// Throws Error when the build has no CUDA, no GPU is present, or the name is unknown.
std::unique_ptr<Backend> make_backend(const std::string& device);
// What make_backend() takes for a --device and a --precision ("" for the default).
inline std::string device_spec(const std::string& device, const std::string& precision) {
  return precision.empty() ? device : device + ":" + precision;
}

}  // namespace bhasa
