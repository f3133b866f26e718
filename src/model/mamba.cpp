// The Mamba LM's forward and backward passes, written once against Backend.
// Shapes: T = B*L tokens, D = d_model, E = d_inner, N = d_state, R = dt_rank,
// K = d_conv, I = d_intermediate, V = vocab (embedding rows), P = R + 2N.
#include "model/mamba.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "kernels/dropout.h"
#include "model/buffers.h"

namespace bhasa {

MambaLM::MambaLM(const ModelConfig& cfg, Backend& backend) : cfg_(cfg), be_(backend), layout_(cfg) {
  cfg_.validate();
  params_ = be_.alloc(layout_.total);
  grads_ = be_.alloc(layout_.total);
}

MambaLM::~MambaLM() {
  release_train_graphs();
  graph_.reset();
  act_.reset();
  prefill_.reset();
  step_.reset();
  be_.free(params_);
  be_.free(grads_);
}

void MambaLM::load_params(const float* host) { be_.upload(params_, host, layout_.total); }
void MambaLM::store_params(float* host) const { be_.download(host, params_, layout_.total); }
void MambaLM::store_grads(float* host) const { be_.download(host, grads_, layout_.total); }
void MambaLM::zero_grads() { be_.zero(grads_, layout_.total); }

void MambaLM::set_dropout(float p, uint64_t seed) {
  check(p >= 0.0f && p < 1.0f, "dropout must be in [0, 1), got " + std::to_string(p));
  if (p != dropout_p_) release_train_graphs();  // they launch the dropout kernels with p, or none
  dropout_p_ = p;
  dropout_seed_ = seed;
}

// Each layer's mixer (sublayer 0) and MLP (sublayer 1) draws its own mask: its seed is
// dropout_seed(seed, layer, sublayer), uploaded into a.drop_seeds by each training forward.
static void upload_drop_seeds(Backend& be, int32_t* drop_seeds, int n_layer, uint64_t seed) {
  std::vector<uint64_t> seeds(2 * size_t(n_layer));  // (n_layer, 2)
  for (int l = 0; l < n_layer; l++)
    for (int sub = 0; sub < 2; sub++) seeds[2 * l + sub] = dropout_seed(seed, uint64_t(l), uint64_t(sub));
  std::vector<int32_t> words(2 * seeds.size());
  std::memcpy(words.data(), seeds.data(), seeds.size() * sizeof(uint64_t));
  be.upload_i32(drop_seeds, words.data(), words.size());
}
static const int32_t* layer_drop_seed(const int32_t* drop_seeds, int layer, int sublayer) {
  return drop_seeds + 2 * (2 * layer + sublayer);
}

void MambaLM::plan(int B, int L) {
  check(B > 0 && L > 0, "batch size and sequence length must be positive");
  if (act_ && B_ == B && L_ == L) return;
  release_train_graphs();  // they hold the old plan's buffers
  act_.reset();
  act_ = std::make_unique<Activations>(be_, cfg_, B, L, /*train=*/true);
  B_ = B;
  L_ = L;
  logits_ = nullptr;
}

size_t MambaLM::activation_bytes() const { return act_ ? act_->bytes : 0; }

// ---------------------------------------------------------------------------
// forward

void MambaLM::forward_stack(Activations& a, DecodeState* s, float drop_p, const TokenPick* pick) {
  const ModelConfig& c = cfg_;
  const int B = a.B, L = a.L, T = a.T, D = c.d_model, E = c.d_inner(), N = c.d_state,
            R = c.dt_rank, K = c.d_conv, P = R + 2 * N, I = c.d_intermediate, V = c.vocab_size;
  const bool mlp = I > 0;
  const float* W = params_;
  auto opt = [&](size_t off) { return off == SIZE_MAX ? nullptr : W + off; };
  const size_t ls = a.layer_stride, TD = size_t(T) * D;

  if (s && L == 1) {  // a decode step: the backend may prepare layer 0's norm with the embedding
    const float* norm0 = c.rms_norm && c.n_layer > 0 ? W + layout_.layers[0].norm_w : nullptr;
    if (!be_.embedding_decode(T, D, a.ids, W + layout_.embedding, a.resid, norm0))
      be_.embedding_forward(T, D, a.ids, W + layout_.embedding, a.resid);
    return decode_stack(a, *s, pick);
  }
  be_.embedding_forward(T, D, a.ids, W + layout_.embedding, a.resid);
  int sub = 0;  // sublayer index: mixer, then MLP when present
  for (int l = 0; l < c.n_layer; l++) {
    const LayerParams& p = layout_.layers[l];
    float* x_in = a.resid + sub * ls * TD;   // (T, D)
    float* x_out = x_in + ls * TD;           // (T, D)
    Operand h = a.normed + sub * ls * TD;    // (T, D)
    Operand xz = a.xz + l * ls * T * 2 * E;  // (T, 2E)
    Operand xs = a.xs + l * ls * T * E;      // (T, E)
    float* dbc = a.dbc + l * ls * T * P;     // (T, P)
    Operand dt = a.dt + l * ls * T * E;      // (T, E)
    Operand y = a.y + l * ls * T * E;        // (T, E)

    // h = norm(x)
    be_.norm_forward(T, D, c.rms_norm, c.norm_eps, x_in, W + p.norm_w, opt(p.norm_b), h,
                     a.mean + sub * ls * T, a.rstd + sub * ls * T);
    // xz = h @ in_proj^T
    be_.gemm(false, true, T, 2 * E, D, h, D, W + p.in_proj, D, 0.f, xz, 2 * E);
    // xs = silu(causal_conv1d(x))
    if (s) {
      float* conv_state = s->conv + size_t(l) * B * (K - 1) * E;  // (B, K-1, E)
      be_.conv1d_silu_with_state(B, L, E, K, xz.f32(), 2 * E, W + p.conv_w, opt(p.conv_b), conv_state, xs.f32());
    } else {
      be_.conv1d_silu_forward(B, L, E, K, xz, 2 * E, W + p.conv_w, opt(p.conv_b), xs);
    }
    // dbc = xs @ x_proj^T;  dt = dbc[:, :R] @ dt_proj^T
    be_.gemm(false, true, T, P, E, xs, E, W + p.x_proj, E, 0.f, dbc, P);
    be_.gemm(false, true, T, E, R, dbc, P, W + p.dt_proj_w, R, 0.f, dt, E);
    // y = selective_scan(...) * silu(z)
    float* h_state = s ? s->ssm + size_t(l) * B * E * N : nullptr;  // (B, E, N)
    be_.scan_forward(B, L, E, N, a.chunk, xs, dt, W + p.dt_proj_b, W + p.A_log, dbc + R, dbc + R + N,
                     P, W + p.D, xz + E, 2 * E, y, a.layer_states(l),
                     h_state, h_state);
    // y = dropout(y): the saved y is the dropped one, which out_proj's weight gradient needs
    if (drop_p > 0) be_.dropout_at(size_t(T) * E, y, drop_p, layer_drop_seed(a.drop_seeds, l, 0));
    // x_out = x_in + y @ out_proj^T  (the GEMM reads x_in as its C: no copy of the residual)
    be_.gemm_residual(false, true, T, D, E, y, E, W + p.out_proj, E, x_in, x_out, D);
    sub++;

    if (mlp) {
      float* m_in = a.resid + sub * ls * TD;
      float* m_out = m_in + ls * TD;
      Operand h2 = a.normed + sub * ls * TD;
      float* f = a.f + l * ls * T * 2 * I;  // (T, 2I)
      float* g = a.g + l * ls * T * I;      // (T, I)
      be_.norm_forward(T, D, c.rms_norm, c.norm_eps, m_in, W + p.norm2_w, opt(p.norm2_b), h2,
                       a.mean + sub * ls * T, a.rstd + sub * ls * T);
      be_.gemm(false, true, T, 2 * I, D, h2, D, W + p.fc1, D, 0.f, f, 2 * I);
      be_.swiglu_forward(T, I, f, g);
      if (drop_p > 0) be_.dropout_at(size_t(T) * I, g, drop_p, layer_drop_seed(a.drop_seeds, l, 1));
      be_.gemm_residual(false, true, T, D, I, g, I, W + p.fc2, I, m_in, m_out, D);
      sub++;
    }
  }
  // final norm; the training plan's head is forward()'s
  float* x_last = a.resid + sub * ls * TD;
  const size_t nf = sub * ls;  // the final norm's slot in mean/rstd
  be_.norm_forward(T, D, c.rms_norm, c.norm_eps, x_last, W + layout_.norm_f_w, opt(layout_.norm_f_b),
                   a.normed_f, a.mean + nf * T, a.rstd + nf * T);
  if (!a.training) {
    // logits = normed_f @ embedding^T (the tied head). Inference needs only each
    // sequence's last position: rows L-1, 2L-1, ... of normed_f, one GEMM with a row
    // stride of L*D. For a 512-token prompt on the mamba-130m shape this skips 30% of
    // the prefill's FLOPs.
    be_.gemm(false, true, a.B, V, D, a.normed_f + size_t(a.L - 1) * D, a.L * D, W + layout_.embedding, D,
             0.f, a.logits, V);
  }
}

// One token per sequence with states (a decode step): the same layers through the
// fused step ops (a backend may fuse a mixer further: mixer_decode_step). The inference plan
// shares one slice among layers, so x_out == x_in and the residual adds in place.
void MambaLM::decode_stack(Activations& a, DecodeState& s, const TokenPick* pick) {
  const ModelConfig& c = cfg_;
  const int B = a.B, D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.dt_rank, K = c.d_conv,
            P = R + 2 * N, I = c.d_intermediate, V = c.vocab_size;
  const float* W = params_;
  auto opt = [&](size_t off) { return off == SIZE_MAX ? nullptr : W + off; };
  float* x = a.resid;  // (B, D), updated in place by every sublayer
  // The norm after this layer's mixer, which a backend may prepare along with out_proj: the
  // next mixer's, or the final one (the head's). None with an MLP (its norm comes first) or
  // a LayerNorm bias (a backend's prepared norm is RMSNorm's bf16(x * g)).
  auto next_norm = [&](int l) -> const float* {
    if (I > 0 || !c.rms_norm) return nullptr;
    if (l + 1 < c.n_layer) return W + layout_.layers[l + 1].norm_w;
    return layout_.norm_f_b == SIZE_MAX ? W + layout_.norm_f_w : nullptr;
  };
  for (int l = 0; l < c.n_layer; l++) {
    const LayerParams& p = layout_.layers[l];
    float* conv_state = s.conv + size_t(l) * B * (K - 1) * E;  // (B, K-1, E)
    float* h_state = s.ssm + size_t(l) * B * E * N;            // (B, E, N)
    float* xz = a.xz.f32();  // an inference plan's activations are fp32
    const Backend::MixerStep fused{B, D, E, N, R, K, c.rms_norm, c.norm_eps, x, W + p.norm_w, opt(p.norm_b),
                                   W + p.in_proj, W + p.conv_w, opt(p.conv_b), W + p.x_proj, W + p.dt_proj_w,
                                   W + p.dt_proj_b, W + p.A_log, W + p.D, W + p.out_proj, conv_state, h_state,
                                   xz, a.dbc, a.y,
                                   next_norm(l)};
    // A backend may run the whole sublayer its own way (fused further); else these four ops.
    if (!be_.mixer_decode_step(fused)) {
      // xz = norm(x) @ in_proj^T;  dbc = silu(conv(x)) @ x_proj^T
      be_.norm_gemm(B, 2 * E, D, c.rms_norm, c.norm_eps, x, W + p.norm_w, opt(p.norm_b), W + p.in_proj, xz);
      be_.ssm_decode_in(B, E, K, P, xz, 2 * E, conv_state, W + p.conv_w, opt(p.conv_b), W + p.x_proj, a.dbc);
      // y = scan step (dt_proj inside) * silu(z); the conv and SSM states advance
      be_.ssm_decode_step(B, E, N, R, K, xz, xz + E, 2 * E, conv_state, W + p.conv_w, opt(p.conv_b), a.dbc,
                          W + p.dt_proj_w, W + p.dt_proj_b, W + p.A_log, W + p.D, h_state, a.y);
      // x += y @ out_proj^T  (y in be_.decode_dtype(B), see Activations)
      be_.gemm(false, true, B, D, E, a.y, E, W + p.out_proj, E, 1.f, x, D);
    }
    if (I > 0) {
      be_.norm_gemm(B, 2 * I, D, c.rms_norm, c.norm_eps, x, W + p.norm2_w, opt(p.norm2_b), W + p.fc1, a.f);
      be_.swiglu_forward(B, I, a.f, a.g);
      be_.gemm(false, true, B, D, I, a.g, I, W + p.fc2, I, 1.f, x, D);
    }
  }
  // logits = norm_f(x) @ embedding^T (the tied head); with pick, then the next ids
  if (pick)
    be_.head_sample(B, V, D, c.rms_norm, c.norm_eps, x, W + layout_.norm_f_w, opt(layout_.norm_f_b),
                    W + layout_.embedding, a.logits, pick->temperature, pick->seed, pick->counter, a.ids,
                    pick->history, pick->capacity);
  else
    be_.norm_gemm(B, V, D, c.rms_norm, c.norm_eps, x, W + layout_.norm_f_w, opt(layout_.norm_f_b),
                  W + layout_.embedding, a.logits);
}

double MambaLM::forward(const int32_t* ids, const int32_t* targets, bool need_backward) {
  check(act_ != nullptr, "MambaLM::forward called before plan(B, L)");
  Activations& a = *act_;
  const int V = cfg_.vocab_size;
  int n_valid = 0;
  for (int t = 0; t < a.T; t++) {
    check(ids[t] >= 0 && ids[t] < V, [&] { return "token id " + std::to_string(ids[t]) + " is outside the model's vocabulary of " + std::to_string(V); });
    check(targets[t] < V, [&] { return "target id " + std::to_string(targets[t]) + " is outside the model's vocabulary of " + std::to_string(V); });
    n_valid += targets[t] >= 0;
  }
  be_.upload_i32(a.ids, ids, a.T);
  be_.upload_i32(a.targets, targets, a.T);
  // Only training forwards drop; evaluation sees the whole network.
  last_drop_p_ = need_backward ? dropout_p_ : 0.0f;
  if (last_drop_p_ > 0) upload_drop_seeds(be_, a.drop_seeds, cfg_.n_layer, dropout_seed_);
  run_captured(fwd_graph_, need_backward, [&] { forward_stack(a, nullptr, last_drop_p_); });
  const int T = a.T, D = cfg_.d_model;
  const float* emb = params_ + layout_.embedding;  // (V, D): the tied head's weight
  if (!need_backward) {
    // logits = normed_f @ embedding^T, kept for logits()
    logits_ = a.full_logits(cfg_);
    be_.gemm(false, true, T, V, D, a.normed_f, D, emb, D, 0.f, logits_, V);
    return n_valid ? be_.cross_entropy(T, V, logits_, V, a.targets, 0.0f) / n_valid : 0.0;
  }
  // The head and its loss with their gradients at once: d_normed = d loss / d normed_f,
  // and the embedding's gradient as the head's weight, added into grads_.
  if (n_valid == 0) {
    be_.zero_operand(a.d_normed, size_t(T) * D);
    return 0.0;
  }
  return be_.head_loss(T, V, D, a.normed_f, emb, a.targets, 1.0f / n_valid, a.d_normed,
                       grads_ + layout_.embedding) / n_valid;
}

// ---------------------------------------------------------------------------
// backward: the same walk in reverse. d_resid carries d loss / d(residual stream).

void MambaLM::backward() {
  check(act_ != nullptr, "MambaLM::backward called before plan(B, L) and forward");
  run_captured(bwd_graph_, true, [&] { backward_stack(*act_); });
}

void MambaLM::backward_stack(Activations& a) {
  const ModelConfig& c = cfg_;
  const int B = a.B, L = a.L, T = a.T, D = c.d_model, E = c.d_inner(), N = c.d_state,
            R = c.dt_rank, K = c.d_conv, P = R + 2 * N, I = c.d_intermediate, V = c.vocab_size;
  const bool mlp = I > 0;
  const float* W = params_;
  float* G = grads_;
  auto opt = [&](size_t off) { return off == SIZE_MAX ? nullptr : W + off; };
  auto gopt = [&](size_t off) { return off == SIZE_MAX ? nullptr : G + off; };
  const size_t TD = size_t(T) * D;
  int sub = c.n_layer * (mlp ? 2 : 1);
  const float drop_p = last_drop_p_;  // the masks of the forward: same seeds, same elements

  // d_resid as the next GEMM's dY: the norm backward that updates d_resid also writes
  // it in operand_dtype() when that is not fp32 (saves the GEMM its own copy).
  const ConstOperand d_res = a.d_resid16.p ? ConstOperand(a.d_resid16) : ConstOperand(a.d_resid);

  // The head's gradients came with the forward (head_loss): a.d_normed holds d loss / d normed_f.
  be_.zero(a.d_resid, TD);
  be_.norm_backward(T, D, c.rms_norm, a.d_normed, a.resid + sub * TD, W + layout_.norm_f_w,
                    a.mean + sub * T, a.rstd + sub * T, a.d_resid, G + layout_.norm_f_w,
                    gopt(layout_.norm_f_b), a.d_resid16);

  for (int l = c.n_layer - 1; l >= 0; l--) {
    const LayerParams& p = layout_.layers[l];
    if (mlp) {
      sub--;
      const float* m_in = a.resid + sub * TD;
      const ConstOperand h2 = a.normed + sub * TD;
      const float* f = a.f + size_t(l) * T * 2 * I;
      const float* g = a.g + size_t(l) * T * I;
      // m_out = m_in + g @ fc2^T
      be_.linear_backward(T, D, I, d_res, D, W + p.fc2, I, g, I, 0.f, a.d_g, I, G + p.fc2);
      if (drop_p > 0) be_.dropout_at(size_t(T) * I, a.d_g, drop_p, layer_drop_seed(a.drop_seeds, l, 1));
      be_.swiglu_backward(T, I, f, a.d_g, a.d_f);
      // f = h2 @ fc1^T
      be_.linear_backward(T, 2 * I, D, a.d_f, 2 * I, W + p.fc1, D, h2, D, 0.f, a.d_normed, D, G + p.fc1);
      be_.norm_backward(T, D, c.rms_norm, a.d_normed, m_in, W + p.norm2_w, a.mean + sub * T,
                        a.rstd + sub * T, a.d_resid, G + p.norm2_w, gopt(p.norm2_b), a.d_resid16);
    }
    sub--;
    const float* x_in = a.resid + sub * TD;
    const ConstOperand h = a.normed + sub * TD;
    const ConstOperand xz = a.xz + size_t(l) * T * 2 * E;
    const ConstOperand xs = a.xs + size_t(l) * T * E;
    const float* dbc = a.dbc + size_t(l) * T * P;
    const ConstOperand dt = a.dt + size_t(l) * T * E;
    const ConstOperand y = a.y + size_t(l) * T * E;
    const float* states = a.layer_states(l);
    // x_out = x_in + y @ out_proj^T
    be_.linear_backward(T, D, E, d_res, D, W + p.out_proj, E, y, E, 0.f, a.d_y, E, G + p.out_proj);
    if (drop_p > 0) be_.dropout_at(size_t(T) * E, a.d_y, drop_p, layer_drop_seed(a.drop_seeds, l, 0));
    // the scan: d_y -> d_xs, d_dt, dB, dC (into d_dbc), dz (into d_xz's second half)
    be_.scan_backward(B, L, E, N, a.chunk, xs, dt, W + p.dt_proj_b, W + p.A_log, dbc + R, dbc + R + N, P,
                      W + p.D, xz + E, 2 * E, states, a.d_y, a.d_xs, a.d_dt, a.d_dbc + R,
                      a.d_dbc + R + N, a.d_xz + E, G + p.A_log, G + p.D, G + p.dt_proj_b);
    // dt = dbc[:, :R] @ dt_proj^T
    be_.linear_backward(T, E, R, a.d_dt, E, W + p.dt_proj_w, R, dbc, P, 0.f, a.d_dbc, P, G + p.dt_proj_w);
    // dbc = xs @ x_proj^T
    be_.linear_backward(T, P, E, a.d_dbc, P, W + p.x_proj, E, xs, E, 1.f, a.d_xs, E, G + p.x_proj);
    // xs = silu(conv(x)): d_xs -> d_x (first half of d_xz)
    be_.conv1d_silu_backward(B, L, E, K, xz, 2 * E, W + p.conv_w, opt(p.conv_b), a.d_xs, a.d_xz,
                             G + p.conv_w, gopt(p.conv_b));
    // xz = h @ in_proj^T
    be_.linear_backward(T, 2 * E, D, a.d_xz, 2 * E, W + p.in_proj, D, h, D, 0.f, a.d_normed, D, G + p.in_proj);
    // (the first layer's d_resid goes to the embedding only: no copy)
    be_.norm_backward(T, D, c.rms_norm, a.d_normed, x_in, W + p.norm_w, a.mean + sub * T,
                      a.rstd + sub * T, a.d_resid, G + p.norm_w, gopt(p.norm_b),
                      l > 0 ? a.d_resid16 : Operand{});
  }
  be_.embedding_backward(T, D, V, a.ids, a.d_resid, G + layout_.embedding);
}

}  // namespace bhasa
