// The official initialisation, as in state-spaces/mamba (mamba_simple.py and
// MambaLMHeadModel._init_weights), computed on the host then uploaded.
#include <cmath>
#include <random>
#include <vector>

#include "model/mamba.h"

namespace bhasa {

void MambaLM::init_params(uint64_t seed) {
  const ModelConfig& c = cfg_;
  const int D = c.d_model, E = c.d_inner(), N = c.d_state, R = c.dt_rank, K = c.d_conv;
  std::vector<float> w(layout_.total, 0.f);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto uniform = [&](size_t off, size_t n, double bound) {
    for (size_t i = 0; i < n; i++) w[off + i] = float((2 * unit(rng) - 1) * bound);
  };
  auto fill = [&](size_t off, size_t n, float v) { std::fill(w.begin() + off, w.begin() + off + n, v); };
  // nn.Linear's default (kaiming_uniform with a = sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  auto linear = [&](size_t off, int out, int in, double scale = 1.0) {
    uniform(off, size_t(out) * in, scale / std::sqrt(double(in)));
  };

  std::normal_distribution<double> normal(0.0, c.initializer_range);
  for (size_t i = 0; i < size_t(c.vocab_size) * D; i++) w[layout_.embedding + i] = float(normal(rng));

  const int n_residuals = c.d_intermediate > 0 ? 2 : 1;
  const double residual_scale = 1.0 / std::sqrt(double(n_residuals * c.n_layer));
  for (const LayerParams& p : layout_.layers) {
    fill(p.norm_w, D, 1.f);
    linear(p.in_proj, 2 * E, D);
    uniform(p.conv_w, size_t(E) * K, 1.0 / std::sqrt(double(K)));  // conv fan_in = K
    if (p.conv_b != SIZE_MAX) uniform(p.conv_b, E, 1.0 / std::sqrt(double(K)));
    linear(p.x_proj, R + 2 * N, E);
    uniform(p.dt_proj_w, size_t(E) * R, std::pow(double(R), -0.5) * c.dt_scale);
    // dt bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], floored
    for (int e = 0; e < E; e++) {
      double dt = std::exp(unit(rng) * (std::log(c.dt_max) - std::log(c.dt_min)) + std::log(c.dt_min));
      dt = std::max(dt, double(c.dt_init_floor));
      w[p.dt_proj_b + e] = float(dt + std::log(-std::expm1(-dt)));
    }
    for (int e = 0; e < E; e++)
      for (int n = 0; n < N; n++) w[p.A_log + size_t(e) * N + n] = float(std::log(double(n + 1)));
    fill(p.D, E, 1.f);
    // out_proj (and fc2) rescaled by 1/sqrt(n_residuals * n_layer), as the official
    // _init_weights does with rescale_prenorm_residual
    linear(p.out_proj, D, E, residual_scale);
    if (c.d_intermediate > 0) {
      fill(p.norm2_w, D, 1.f);
      linear(p.fc1, 2 * c.d_intermediate, D);
      linear(p.fc2, D, c.d_intermediate, residual_scale);
    }
  }
  fill(layout_.norm_f_w, D, 1.f);
  load_params(w.data());
}

}  // namespace bhasa
