// What the model allocates besides its parameters: the activation plan of a
// (B, L) batch, and the captured decode step. Private to src/model/.
#pragma once
#include <cstdlib>
#include <vector>

#include "model/mamba.h"

namespace bhasa {


// Every activation of one (B, L) plan. In a training plan each layer has its own
// slice (kept for backward); in an inference plan layers share one slice
// (layer_stride 0) since nothing is kept. The Operands are activations only GEMMs
// read: a training plan stores them in the backend's operand_dtype() (bf16 for the
// CUDA backend's bf16 GEMMs), an inference plan in fp32, except y of a one-token plan:
// Backend::decode_dtype(B), the dtype the decode step writes it in for out_proj.
// The mixer's (T, E) activations (xz, xs, dt, and the backward's d_dt, d_y, d_xs; also
// the norms' dout d_normed, (T, D)) are Operands too: a training plan keeps them in
// operand_dtype() as mamba_ssm does under autocast (their producers round once, the
// scan, conv and GEMMs read them as they are), which halves their bytes in bf16.
// BHASA_BF16_ACTS (bits: 1 d_dt, 2 xs, 4 dt, 8 xz, 16 d_y, 32 d_xs, 64 d_normed; default
// all) keeps the cleared ones fp32 (timing).
inline bool bf16_act(int bit) {
  static const int mask = [] {
    const char* v = std::getenv("BHASA_BF16_ACTS");
    return v ? std::atoi(v) : ~0;
  }();
  return (mask & bit) != 0;
}
struct MambaLM::Activations {
  Backend& be;
  int B, L, T;
  bool training;
  size_t layer_stride;  // 1 when each layer keeps its activations, 0 when they share
  size_t bytes = 0;     // all of the plan's buffers
  float* resid;     // (n_sub + 1, T, D): residual stream entering each sublayer, then leaving the last
  Operand normed;   // (n_sub, T, D): the pre-norm output each sublayer reads
  float* mean;      // (n_sub + 1, T)  (LayerNorm only; the last is the final norm's)
  float* rstd;      // (n_sub + 1, T)
  Operand xz;       // (n_layer, T, 2E): in_proj output, [x | z]
  Operand xs;       // (n_layer, T, E): SiLU(conv(x)), the scan's input u
  float* dbc;       // (n_layer, T, P): x_proj output, [dt_low | B | C]
  Operand dt;       // (n_layer, T, E): dt_proj output (before bias and softplus)
  Operand y;        // (n_layer, T, E): gated scan output (after dropout)
  // The scan's chunk (Backend::scan_chunk): the forward pass saves the state only every
  // chunk steps, the backward pass recomputes inside a chunk. 64 (CPU) keeps the saved
  // states at E*N/64 floats per token; 8 (CUDA) at E*N/8 = 2E for N = 16, still O(T*E).
  int chunk;
  float* states;    // (n_layer, B, ceil(L/chunk), E, N): scan state at chunk starts (training only)
  size_t states_per_layer;
  float* layer_states(int l) const { return states ? states + l * states_per_layer : nullptr; }
  float* f;         // (n_layer, T, 2I): fc1 output [value | gate]
  float* g;         // (n_layer, T, I): value * SiLU(gate)
  Operand normed_f; // (T, D)
  // Inference: (B, V), the last positions. Training plans: (T, V) for evaluation forwards
  // only, allocated by the first (the training forward's head_loss needs no logits buffer).
  float* logits;
  int32_t* ids;     // (T)
  int32_t* targets; // (T)
  // (n_layer, 2, 2) a training plan's dropout seeds, per (layer, sublayer): uint64 as two
  // int32, uploaded by each training forward and read by the kernels (Backend::dropout_at)
  int32_t* drop_seeds = nullptr;
  // backward scratch, one layer's worth, reused by every layer
  float* d_resid;   // (T, D)
  Operand d_resid16;  // (T, D): d_resid in operand_dtype() for the GEMMs' dY; null when that is fp32
  Operand d_normed;  // (T, D): the norms' dout; a training forward leaves d loss / d normed_f here (head_loss's dX)
  Operand d_xz;     // (T, 2E): in_proj's dY, [dx | dz]
  float *d_dbc, *d_f, *d_g;
  Operand d_xs;     // (T, E): d loss / d xs: the scan's du, plus x_proj's dX (beta 1), the conv's dout
  Operand d_dt;     // (T, E): dt_proj's dY (the scan's ddt)
  Operand d_y;      // (T, E): out_proj's dX (the scan's dout)
  std::vector<void*> owned;

  Activations(Backend& backend, const ModelConfig& c, int B_, int L_, bool train)
      : be(backend), B(B_), L(L_), T(B_ * L_), training(train), layer_stride(train ? 1 : 0),
        chunk(backend.scan_chunk()) {
    const size_t t = T, D = c.d_model, E = c.d_inner(), N = c.d_state, P = c.dt_rank + 2 * c.d_state,
                 I = c.d_intermediate, V = c.vocab_size;
    const size_t nl = train ? c.n_layer : 1;
    const size_t n_sub = c.n_layer * (I > 0 ? 2 : 1), ns = train ? n_sub : 1;
    const size_t n_chunks = (L + chunk - 1) / chunk;
    const Dtype od = train ? be.operand_dtype() : Dtype::f32;
    auto act = [&](int bit) { return bf16_act(bit) ? od : Dtype::f32; };
    auto take = [&](size_t n) {
      float* p = n ? be.alloc(n) : nullptr;
      if (p) owned.push_back(p);
      bytes += n * sizeof(float);
      return p;
    };
    auto take_operand = [&](size_t n, Dtype d) {
      Operand o = n ? be.alloc_operand(n, d) : Operand{nullptr, d};
      if (o.p) owned.push_back(o.p);
      bytes += n * dtype_bytes(d);
      return o;
    };
    resid = take((ns + 1) * t * D);
    normed = take_operand(ns * t * D, od);
    mean = take((ns + 1) * t);
    rstd = take((ns + 1) * t);
    xz = take_operand(nl * t * 2 * E, act(8));
    xs = take_operand(nl * t * E, act(2));
    dbc = take(nl * t * P);
    dt = take_operand(nl * t * E, act(4));
    y = take_operand(nl * t * E, !train && L == 1 ? be.decode_dtype(B) : od);
    states_per_layer = B * n_chunks * E * N;
    states = train ? take(nl * states_per_layer) : nullptr;
    f = take(nl * t * 2 * I);
    g = take(nl * t * I);
    normed_f = take_operand(t * D, od);
    logits = train ? nullptr : take(size_t(B) * V);  // inference keeps the last position's only
    ids = be.alloc_i32(t);
    targets = be.alloc_i32(t);
    bytes += 2 * t * sizeof(int32_t);
    if (train) drop_seeds = be.alloc_i32(4 * size_t(nl));
    d_resid = d_dbc = d_f = d_g = nullptr;
    if (train) {
      d_resid = take(t * D);
      if (od != Dtype::f32) d_resid16 = take_operand(t * D, od);
      d_normed = take_operand(t * D, act(64));
      d_xz = take_operand(t * 2 * E, od);
      d_xs = take_operand(t * E, act(32));
      d_dbc = take(t * P);
      d_dt = take_operand(t * E, act(1));
      d_y = take_operand(t * E, act(16));
      d_f = take(t * 2 * I);
      d_g = take(t * I);
    }
  }
  // The (T, V) logits of a training plan, allocated on first use.
  float* full_logits(const ModelConfig& c) {
    if (!logits) {
      logits = be.alloc(size_t(T) * c.vocab_size);
      owned.push_back(logits);
      bytes += size_t(T) * c.vocab_size * sizeof(float);
    }
    return logits;
  }
  ~Activations() {
    for (void* p : owned) be.free(p);
    be.free(ids);
    be.free(targets);
    if (drop_seeds) be.free(drop_seeds);
  }
};

// The captured token step and what it was captured with: replaying it is only
// valid while all of these stay the same.
struct MambaLM::DecodeGraph {
  Backend& be;
  int handle = -1;        // one token step (each graph captured when first needed; -1 before)
  int handle_run = -1;    // run_steps token steps back to back, so that PDL links each step's
                          // head to the next step's embedding (no edge crosses graph launches)
  int run_steps = 0;
  const int32_t* ids = nullptr;  // the step plan's ids buffer
  const float* conv = nullptr;   // the DecodeState's buffers
  const float* ssm = nullptr;
  float temperature = 0.0f;
  uint64_t seed = 0;
  int32_t* counter = nullptr;  // (1): the step index the sampler reads and advances
  int32_t* history = nullptr;  // (capacity, B): every step's sampled ids
  int capacity = 0, batch = 0;
  explicit DecodeGraph(Backend& b) : be(b) {}
  ~DecodeGraph() {
    release_graph();
    be.free(counter);
    be.free(history);
  }
  void release_graph() {
    if (handle >= 0) be.graph_destroy(handle);
    if (handle_run >= 0) be.graph_destroy(handle_run);
    handle = handle_run = -1;
  }
};

}  // namespace bhasa
