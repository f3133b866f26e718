// The Mamba-1 language model, written once against the Backend kernel interface:
// embedding -> n_layer x [pre-norm Mamba mixer (+ pre-norm gated MLP)] -> final norm
// -> LM head tied to the embedding. Forward and backward for training, and a
// prefill + per-token recurrent step for inference.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"
#include "model/params.h"

namespace bhasa {

// Recurrent state of a batch of sequences: everything a new token needs from the past.
// Its size does not depend on how many tokens came before.
struct DecodeState {
  int batch = 0;
  float* conv = nullptr;  // (n_layer, B, d_conv - 1, d_inner): the last d_conv-1 conv inputs, oldest first
  float* ssm = nullptr;   // (n_layer, B, d_inner, d_state)
  size_t conv_size = 0, ssm_size = 0;  // floats
};

class MambaLM {
 public:
  MambaLM(const ModelConfig& cfg, Backend& backend);
  ~MambaLM();
  MambaLM(const MambaLM&) = delete;
  MambaLM& operator=(const MambaLM&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  Backend& backend() { return be_; }
  size_t num_params() const { return layout_.total; }

  // Flat parameter and gradient buffers (layout().total floats, backend memory).
  float* params() { return params_; }
  float* grads() { return grads_; }
  void load_params(const float* host);   // host (total) -> params
  void store_params(float* host) const;  // params -> host (total)
  void store_grads(float* host) const;   // grads -> host (total)
  void zero_grads();
  // The official initialisation (mamba_simple.py / MambaLMHeadModel._init_weights).
  void init_params(uint64_t seed);

  // ---- training and evaluation -----------------------------------------------
  // Plans every activation for batches of (B, L) once; forward/backward then
  // allocate nothing (except the first evaluation forward's logits, see logits()).
  // Calling plan again with another shape re-plans.
  void plan(int B, int L);
  int planned_batch() const { return B_; }
  int planned_seq_len() const { return L_; }
  // ids, targets: (B, L) host int32; targets < 0 are ignored. Returns the mean
  // cross-entropy over valid targets (0 when none). With need_backward the head's
  // gradients come with the loss (Backend::head_loss): the tied embedding's share is
  // added into grads here, so call zero_grads() before a step's first forward.
  double forward(const int32_t* ids, const int32_t* targets, bool need_backward);
  // grads += d(mean loss)/d(params), for the batch of the last forward(..., true)
  // (from the final norm down; the head's share was added by that forward).
  void backward();
  // Dropout for the training forwards that follow (need_backward = true): each mixer's
  // gated scan output y (T, E) before out_proj and each MLP's g (T, I) before fc2, with
  // masks that are a pure function of (seed, layer, sublayer) (kernels/dropout.h), so
  // backward() regenerates them. Set a new seed per step and micro-batch. Evaluation
  // forwards, prefill and step never drop; p = 0 (the default) runs no dropout kernel.
  void set_dropout(float p, uint64_t seed);
  float dropout() const { return dropout_p_; }
  // (B, L, V) backend memory; valid after forward(..., need_backward=false). The
  // first such forward of a plan allocates them (training forwards need none).
  const float* logits() const { return logits_; }
  // The activation bytes the plan holds (for reporting memory use).
  size_t activation_bytes() const;
  // Where the backend offers it (Backend::graphs_for_training), a training plan's
  // forward stack and backward are captured as graphs at their second run and replayed
  // after: the same kernels on the same buffers, bit for bit, launched as two graphs
  // instead of ~600 launches a step; with dropout too (the kernels read their seeds from
  // memory that each training forward uploads).
  // set_train_graphs(false) keeps every step launch by launch.
  void set_train_graphs(bool on);
  bool train_graphs_captured() const { return fwd_graph_.handle >= 0 && bwd_graph_.handle >= 0; }

  // ---- inference -------------------------------------------------------------
  DecodeState new_state(int batch);
  void free_state(DecodeState& s);
  void reset_state(DecodeState& s);
  // Runs the prompt ids (B, L) through the chunked scan, leaves the final conv and
  // SSM states in s (which must have batch B), and writes the last position's
  // logits to last_logits (B, V) host. s may hold an earlier state to continue from.
  void prefill(DecodeState& s, const int32_t* ids, int L, float* last_logits);
  // One token per sequence: ids (B) host; logits (B, V) host. Allocates nothing.
  void step(DecodeState& s, const int32_t* ids, float* logits);
  // Generates n_new tokens per sequence, continuing from s (e.g. after prefill):
  // first_ids (B) host go in first, then each generated id is fed back as the next
  // input; out_ids (B, n_new) host. temperature <= 0 is greedy, otherwise a draw by
  // kernels/sampling.h's rule keyed by seed (the same tokens on every backend).
  // Where the backend supports graphs, the whole token step (all layers and the
  // sampling) is captured once and replayed; otherwise it is a loop of step().
  void generate_tokens(DecodeState& s, const int32_t* first_ids, int n_new, int32_t* out_ids,
                       float temperature, uint64_t seed);

 private:
  struct Activations;
  // embedding -> layers -> final norm -> logits (B*L, V) into a.logits, for ids already in a.ids.
  // With a state, the conv and scan continue from it and leave their final states in it.
  // drop_p > 0 (training forwards only): dropout on y and g with the seeds in a.drop_seeds.
  // pick (decode steps only): the next ids sampled into a.ids at the end, by the backend's
  // head_sample (which may fuse the head and the sampling).
  struct TokenPick {
    float temperature;
    uint64_t seed;
    int32_t *counter, *history;
    int capacity;
  };
  void forward_stack(Activations& a, DecodeState* s, float drop_p = 0.0f, const TokenPick* pick = nullptr);
  // forward_stack at L = 1 with states
  void decode_stack(Activations& a, DecodeState& s, const TokenPick* pick);
  void backward_stack(Activations& a);  // backward() for the last training forward on a
  Activations& inference_buffers(std::unique_ptr<Activations>& slot, int B, int L);
  // One captured part of the training step (train_graph.cpp).
  struct TrainGraph {
    int handle = -1;   // the backend's graph, once captured
    int runs = 0;      // runs so far in this plan: the first is eager (it warms up the GEMM
                       // plans and scratch buffers, which a capture cannot allocate)
    bool failed = false;
  };
  // Runs body: eagerly, or captured into g and replayed (see set_train_graphs).
  void run_captured(TrainGraph& g, bool allowed, const std::function<void()>& body);
  void release_train_graphs();

  ModelConfig cfg_;
  Backend& be_;
  ParamLayout layout_;
  float* params_ = nullptr;  // (total)
  float* grads_ = nullptr;   // (total)
  int B_ = 0, L_ = 0;
  std::unique_ptr<Activations> act_;      // training / evaluation plan
  std::unique_ptr<Activations> prefill_;  // inference, (B, L) of the last prefill
  std::unique_ptr<Activations> step_;     // inference, (B, 1)
  struct DecodeGraph;
  std::unique_ptr<DecodeGraph> graph_;    // the captured token step, when the backend has graphs
  float* logits_ = nullptr;
  float dropout_p_ = 0.0f;  // set_dropout's
  uint64_t dropout_seed_ = 0;
  float last_drop_p_ = 0.0f;  // what the last forward(..., true) applied, for backward()
  bool train_graphs_ = true;
  TrainGraph fwd_graph_, bwd_graph_;
};

}  // namespace bhasa
