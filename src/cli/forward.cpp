// bhasa forward: one forward (and optionally backward) pass over given token ids,
// dumping logits, loss and gradients: the debugging and testing entry point.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "core/error.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/mamba.h"

namespace bhasa::cli {

namespace {
struct ForwardOptions {
  std::string model, input, out;
  bool grads = false;
  RuntimeOptions rt;
};

void run_forward(const ForwardOptions& o) {
  ModelFiles files = load_model_dir(o.model);
  auto inputs = read_tensors(o.input);
  auto it = inputs.find("input_ids");
  check(it != inputs.end(), o.input + " has no tensor named input_ids: it must hold input_ids (B, L) int64");
  const TensorData& in = it->second;
  check(in.dtype == DType::I64 && in.shape.size() == 2,
        "input_ids in " + o.input + " must be a (B, L) integer tensor, got " + shape_str(in.shape));
  const int B = int(in.shape[0]), L = int(in.shape[1]);
  check(B > 0 && L > 1, "input_ids must have at least one row and two columns, got " + shape_str(in.shape));

  auto backend = o.rt.make();
  MambaLM model(files.cfg, *backend);
  model.load_params(files.params.data());
  const int V = files.cfg.vocab_size;
  std::vector<int32_t> ids(size_t(B) * L), targets(size_t(B) * L);  // (B, L)
  for (int b = 0; b < B; b++)
    for (int t = 0; t < L; t++) {
      const int64_t id = in.i64[size_t(b) * L + t];
      check(id >= 0 && id < V, [&] { return "input_ids holds " + std::to_string(id) + ", outside the vocabulary of " + std::to_string(V); });
      ids[size_t(b) * L + t] = int32_t(id);
      targets[size_t(b) * L + t] = t + 1 < L ? int32_t(in.i64[size_t(b) * L + t + 1]) : -1;
    }

  model.plan(B, L);
  std::map<std::string, TensorData> out;
  TensorData logits{DType::F32, {B, L, V}, std::vector<float>(size_t(B) * L * V), {}};
  const double loss = model.forward(ids.data(), targets.data(), false);
  backend->download(logits.f32.data(), model.logits(), logits.f32.size());
  out["logits"] = std::move(logits);
  out["loss"] = TensorData{DType::F32, {1}, {float(loss)}, {}};
  if (o.grads) {
    model.zero_grads();
    model.forward(ids.data(), targets.data(), true);
    model.backward();
    std::vector<float> g(model.num_params());
    model.store_grads(g.data());
    for (const ParamTensor& t : model.layout().tensors)
      out["grad." + t.name] = TensorData{DType::F32, t.shape,
                                         std::vector<float>(g.begin() + t.offset, g.begin() + t.offset + t.numel), {}};
  }
  write_tensors(o.out, out);
  std::printf("loss %.6f  (B=%d, L=%d, V=%d) -> %s\n", loss, B, L, V, o.out.c_str());
}
}  // namespace

void add_forward_command(CLI::App& app) {
  auto o = std::make_shared<ForwardOptions>();
  CLI::App* cmd = app.add_subcommand("forward", "One forward (and backward) pass over input_ids; writes logits, loss and gradients");
  cmd->add_option("--model", o->model, "model directory (config.json + model.safetensors)")->required();
  cmd->add_option("--input", o->input, "safetensors file with input_ids (B, L) int64")->required();
  cmd->add_option("--out", o->out, "output safetensors file")->required();
  cmd->add_flag("--grads", o->grads, "also write grad.<name> for every parameter");
  o->rt.add_to(cmd);
  cmd->callback([o] { run_forward(*o); });
}

}  // namespace bhasa::cli
