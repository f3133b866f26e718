// Inference: prefill a prompt with the chunked scan, then one recurrent step per
// token, each costing the same however long the text before it. The same
// forward_stack as training, with a DecodeState carrying the conv and SSM states.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/error.h"
#include "kernels/sampling.h"
#include "model/buffers.h"
#include "model/mamba.h"

namespace bhasa {

MambaLM::Activations& MambaLM::inference_buffers(std::unique_ptr<Activations>& slot, int B, int L) {
  if (!slot || slot->B != B || slot->L != L) {
    slot.reset();
    slot = std::make_unique<Activations>(be_, cfg_, B, L, /*train=*/false);
  }
  return *slot;
}

DecodeState MambaLM::new_state(int batch) {
  check(batch > 0, "batch size must be positive");
  DecodeState s;
  s.batch = batch;
  s.conv_size = size_t(cfg_.n_layer) * batch * (cfg_.d_conv - 1) * cfg_.d_inner();
  s.ssm_size = size_t(cfg_.n_layer) * batch * cfg_.d_inner() * cfg_.d_state;
  s.conv = be_.alloc(s.conv_size);
  s.ssm = be_.alloc(s.ssm_size);
  inference_buffers(step_, batch, 1);  // so that step() allocates nothing
  return s;
}

void MambaLM::free_state(DecodeState& s) {
  be_.free(s.conv);
  be_.free(s.ssm);
  s = DecodeState{};
}

void MambaLM::reset_state(DecodeState& s) {
  be_.zero(s.conv, s.conv_size);
  be_.zero(s.ssm, s.ssm_size);
}

static void check_ids(const int32_t* ids, size_t n, int V) {
  for (size_t i = 0; i < n; i++)
    check(ids[i] >= 0 && ids[i] < V, [&] { return "token id " + std::to_string(ids[i]) +
                                         " is outside the model's vocabulary of " + std::to_string(V); });
}

void MambaLM::prefill(DecodeState& s, const int32_t* ids, int L, float* last_logits) {
  check(L > 0, "the prompt is empty: give at least one token");
  const int B = s.batch, V = cfg_.vocab_size;
  check_ids(ids, size_t(B) * L, V);
  Activations& a = inference_buffers(prefill_, B, L);
  be_.freeze_weights(params_, layout_.total);  // decoding starts: a backend may copy them to bf16
  be_.upload_i32(a.ids, ids, a.T);
  forward_stack(a, &s);
  for (int b = 0; b < B; b++)
    be_.download(last_logits + size_t(b) * V, a.logits + size_t(b) * V, V);
}

void MambaLM::step(DecodeState& s, const int32_t* ids, float* logits) {
  const int B = s.batch, V = cfg_.vocab_size;
  check_ids(ids, B, V);
  Activations& a = inference_buffers(step_, B, 1);
  be_.freeze_weights(params_, layout_.total);  // a check, unless the weights were written since
  be_.upload_i32(a.ids, ids, B);
  forward_stack(a, &s);
  be_.download(logits, a.logits, size_t(B) * V);
}

// Token steps a replayed graph holds (BHASA_DECODE_GRAPH_STEPS, default 8): within one graph
// each step's first kernel starts under the previous step's last (PDL); between two graph
// launches it waits for the whole previous graph.
static int decode_graph_steps() {
  const char* env = std::getenv("BHASA_DECODE_GRAPH_STEPS");
  const int n = env ? std::atoi(env) : 8;
  return std::clamp(n, 1, 64);
}

void MambaLM::generate_tokens(DecodeState& s, const int32_t* first_ids, int n_new, int32_t* out_ids,
                              float temperature, uint64_t seed) {
  check(n_new >= 0, "the number of tokens to generate must not be negative");
  const int B = s.batch, V = cfg_.vocab_size;
  check_ids(first_ids, B, V);
  if (n_new == 0) return;
  if (!be_.supports_graphs()) {
    std::vector<int32_t> ids(first_ids, first_ids + B);  // (B)
    std::vector<float> logits(size_t(B) * V);            // (B, V)
    for (int i = 0; i < n_new; i++) {
      step(s, ids.data(), logits.data());
      for (int b = 0; b < B; b++) {
        const float* row = logits.data() + size_t(b) * V;
        int best = 0;
        float best_score = sample_score(row[0], temperature, seed, i, b, 0);
        for (int v = 1; v < V; v++) {
          const float sc = sample_score(row[v], temperature, seed, i, b, v);
          if (sc > best_score) best_score = sc, best = v;
        }
        ids[b] = best;
        out_ids[size_t(b) * n_new + i] = best;
      }
    }
    return;
  }
  Activations& a = inference_buffers(step_, B, 1);
  // Before the eager step and the capture: the graph reads the copy (at a fixed address)
  be_.freeze_weights(params_, layout_.total);
  if (!graph_) graph_ = std::make_unique<DecodeGraph>(be_);
  DecodeGraph& g = *graph_;
  if (g.capacity < n_new || g.batch != B) {
    g.release_graph();
    be_.free(g.history);
    g.capacity = std::max(n_new, 256);
    g.batch = B;
    g.history = be_.alloc_i32(size_t(g.capacity) * B);
  }
  if (!g.counter) g.counter = be_.alloc_i32(1);
  const int32_t zero = 0;
  be_.upload_i32(g.counter, &zero, 1);
  be_.upload_i32(a.ids, first_ids, B);
  const TokenPick pick{temperature, seed, g.counter, g.history, g.capacity};
  auto token_step = [&] { forward_stack(a, &s, 0.0f, &pick); };  // the layers, the head, the next ids
  // The first token runs eagerly: it also sizes every scratch buffer and picks every
  // GEMM algorithm, so the capture below allocates nothing.
  token_step();
  if (n_new > 1) {
    const int run = decode_graph_steps();
    if ((g.handle >= 0 && !be_.graph_current(g.handle)) || (g.handle_run >= 0 && !be_.graph_current(g.handle_run)) ||
        g.run_steps != run || g.ids != a.ids || g.conv != s.conv || g.ssm != s.ssm || g.temperature != temperature ||
        g.seed != seed) {
      g.release_graph();
      g.run_steps = run;
      g.ids = a.ids, g.conv = s.conv, g.ssm = s.ssm, g.temperature = temperature, g.seed = seed;
    }
    auto capture = [&](int steps) {
      be_.graph_begin_capture();
      try {
        for (int i = 0; i < steps; i++) token_step();
      } catch (...) {
        try { be_.graph_end_capture(); } catch (...) {}
        throw;
      }
      return be_.graph_end_capture();
    };
    // the remaining n_new - 1 steps: whole runs, then single steps; each graph captured the
    // first time it is needed
    const int runs = run > 1 ? (n_new - 1) / run : 0, singles = n_new - 1 - runs * run;
    if (runs > 0 && g.handle_run < 0) g.handle_run = capture(run);
    if (singles > 0 && g.handle < 0) g.handle = capture(1);
    for (int i = 0; i < runs; i++) be_.graph_replay(g.handle_run);
    for (int i = 0; i < singles; i++) be_.graph_replay(g.handle);
  }
  std::vector<int32_t> history(size_t(n_new) * B);  // (n_new, B)
  be_.download_i32(history.data(), g.history, history.size());
  for (int i = 0; i < n_new; i++)
    for (int b = 0; b < B; b++) out_ids[size_t(b) * n_new + i] = history[size_t(i) * B + b];
}

}  // namespace bhasa
