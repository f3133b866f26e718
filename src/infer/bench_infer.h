// Inference throughput on random weights, for `bhasa bench decode|prefill`: each
// returns one JSON object (printed as one line by the CLI) with tokens_per_s.
#pragma once
#include <nlohmann/json.hpp>

#include "model/config.h"

namespace bhasa {

class Backend;

// Prefills batch prompts of prompt_len tokens on the backend, then times new_tokens greedy
// steps of all of them through generate_tokens (on a GPU the step is a CUDA graph, captured
// in an untimed run first); tokens_per_s counts every sequence's tokens. On the CPU it also
// measures the memory read bandwidth and reports the decode bound it implies: every weight
// is read once a step, so steps/s <= bandwidth / weight bytes.
nlohmann::json bench_decode(const ModelConfig& cfg, Backend& backend, int threads, int batch = 1,
                            int prompt_len = 64, int new_tokens = 128);
// Times one prefill of a prompt_len-token prompt (batch 1), after one untimed warm-up.
nlohmann::json bench_prefill(const ModelConfig& cfg, int threads, int prompt_len = 512);

// Read bandwidth of this machine in bytes/s: sums a buffer much larger than the caches.
double measure_read_bandwidth(int threads);

}  // namespace bhasa
