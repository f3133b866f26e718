// Inference throughput on random weights, for `bhasa bench decode|prefill`: each
// returns one JSON object (printed as one line by the CLI) with tokens_per_s.
#pragma once
#include <nlohmann/json.hpp>

#include "model/config.h"

namespace bhasa {

// Prefills a prompt_len-token prompt, then times new_tokens recurrent steps (batch 1,
// greedy). Also measures the memory read bandwidth, and reports the decode bound it
// implies: every weight is read once per token, so tokens/s <= bandwidth / weight bytes.
nlohmann::json bench_decode(const ModelConfig& cfg, int threads, int prompt_len = 64,
                            int new_tokens = 128);
// Times one prefill of a prompt_len-token prompt (batch 1), after one untimed warm-up.
nlohmann::json bench_prefill(const ModelConfig& cfg, int threads, int prompt_len = 512);

// Read bandwidth of this machine in bytes/s: sums a buffer much larger than the caches.
double measure_read_bandwidth(int threads);

}  // namespace bhasa
