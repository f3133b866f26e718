#include "infer/generator.h"

#include <algorithm>
#include <map>

#include "core/error.h"
#include "infer/text_stream.h"
#include "io/safetensors.h"

namespace bhasa {

namespace {
constexpr int kPrefillChunk = 512;  // long prompts go through prefill in pieces: bounded memory
constexpr const char* kStateFormat = "bhasa-decode-state-v1";
}  // namespace

void GenerateOptions::validate() const {
  check(max_new_tokens >= 0,
        "--max-new-tokens must be >= 0, got " + std::to_string(max_new_tokens));
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::MaxTokens: return "max_tokens";
    case StopReason::StopString: return "stop";
    case StopReason::EndOfText: return "eos";
    case StopReason::Cancelled: return "cancelled";
  }
  return "?";
}

static int sampling_vocab(const MambaLM& model, const Tokenizer* tok) {
  int V = model.config().vocab_size;
  return tok ? std::min(V, tok->vocab_size()) : V;
}

Generator::Generator(MambaLM& model, const Tokenizer* tokenizer, const SamplerOptions& sampling)
    : model_(model), tok_(tokenizer), sampler_(sampling, sampling_vocab(model, tokenizer)),
      state_(model.new_state(1)), logits_(model.config().vocab_size) {
  if (tok_) eos_id_ = tok_->token_id("<|endoftext|>");
}

Generator::~Generator() { model_.free_state(state_); }

void Generator::reset() {
  model_.reset_state(state_);
  history_.clear();
  n_past_ = 0;
}

void Generator::remember(int32_t id) {
  history_.push_back(id);
  const size_t keep = size_t(sampler_.options().repeat_last_n);
  if (keep > 0 && history_.size() >= 2 * keep + 64)  // trim now and then, not per token
    history_.erase(history_.begin(), history_.end() - keep);
}

void Generator::feed(std::span<const int32_t> ids) {
  check(!ids.empty(), "the prompt is empty: give at least one token");
  // Checked up front (prefill checks too) so a bad id cannot leave a half-fed state.
  const int V = model_.config().vocab_size;
  for (int32_t id : ids)
    check(id >= 0 && id < V, [&] { return "token id " + std::to_string(id) + " is outside the model's vocabulary [0, " +
                                 std::to_string(V) + ")"; });
  for (size_t at = 0; at < ids.size(); at += kPrefillChunk) {
    int L = int(std::min<size_t>(kPrefillChunk, ids.size() - at));
    model_.prefill(state_, ids.data() + at, L, logits_.data());
  }
  for (int32_t id : ids) remember(id);
  n_past_ += int64_t(ids.size());
}

void Generator::feed(std::string_view text) {
  check(tok_ != nullptr,
        "this model directory has no tokenizer.json, so text cannot be encoded: "
        "give token ids instead (--prompt-ids 1,2,3)");
  check(!text.empty(), "the prompt is empty: give some text");
  std::vector<int32_t> ids = tok_->encode(text);
  check(!ids.empty(), "the prompt encodes to no tokens");
  feed(ids);
}

int32_t Generator::next() {
  check(n_past_ > 0, "nothing has been fed yet: feed a prompt before sampling");
  int32_t id = sampler_.sample(logits_.data(), history_);
  model_.step(state_, &id, logits_.data());
  remember(id);
  ++n_past_;
  return id;
}

Generation Generator::generate(const GenerateOptions& opts,
                               const std::function<void(std::string_view)>& on_text,
                               const std::atomic<bool>* cancel) {
  opts.validate();
  check(tok_ != nullptr || opts.stop.empty(),
        "stop strings need a tokenizer.json in the model directory");
  Generation out;
  Utf8Assembler utf8;
  StopMatcher stops(opts.stop);
  auto emit = [&](const std::string& s) {
    if (s.empty()) return;
    out.text += s;
    if (on_text) on_text(s);
  };
  bool stopped = false;
  for (int i = 0; i < opts.max_new_tokens && !stopped; ++i) {
    if (cancel && cancel->load()) {
      out.reason = StopReason::Cancelled;
      break;
    }
    int32_t id = next();
    out.ids.push_back(id);
    if (id == eos_id_) {
      out.reason = StopReason::EndOfText;
      break;
    }
    if (!tok_) continue;
    emit(stops.push(utf8.push(tok_->decode_token(id)), stopped));
    if (stopped) out.reason = StopReason::StopString;
  }
  if (tok_ && !stopped) {
    emit(stops.push(utf8.flush(), stopped));
    if (stopped)
      out.reason = StopReason::StopString;
    else
      emit(stops.flush());
  }
  return out;
}

void Generator::save_state(const std::string& path) const {
  const ModelConfig& cfg = model_.config();
  Backend& be = model_.backend();
  std::vector<float> conv(state_.conv_size), ssm(state_.ssm_size);
  be.download(conv.data(), state_.conv, conv.size());
  be.download(ssm.data(), state_.ssm, ssm.size());
  std::vector<int64_t> history(history_.begin(), history_.end());

  const int64_t conv_rows = int64_t(state_.conv_size) / (int64_t(cfg.n_layer) * cfg.d_inner());
  std::vector<TensorToWrite> tensors = {
      {"conv", DType::F32, {cfg.n_layer, 1, conv_rows, cfg.d_inner()}, conv.data()},
      {"ssm", DType::F32, {cfg.n_layer, 1, cfg.d_inner(), cfg.d_state}, ssm.data()}};
  if (n_past_ > 0) tensors.push_back({"logits", DType::F32, {cfg.vocab_size}, logits_.data()});
  if (!history.empty())
    tensors.push_back({"history", DType::I64, {int64_t(history.size())}, history.data()});
  std::map<std::string, std::string> meta = {
      {"format", kStateFormat}, {"layout_hash", cfg.layout_hash()}, {"batch", "1"},
      {"n_past", std::to_string(n_past_)}, {"rng", std::to_string(sampler_.rng_state())}};
  write_safetensors(path, tensors, meta);
}

void Generator::load_state(const std::string& path) {
  SafeTensorsFile f(path);
  auto meta = [&](const char* key) {
    auto it = f.metadata().find(key);
    return it == f.metadata().end() ? std::string() : it->second;
  };
  check(meta("format") == kStateFormat,
        path + " is not a bhasa decode state (saved with /save or save_state)");
  const ModelConfig& cfg = model_.config();
  check(meta("layout_hash") == cfg.layout_hash(),
        path + " was saved from a different model (layout " + meta("layout_hash") + ", this model is " +
            cfg.layout_hash() + "): load it with the model that saved it");
  check(meta("batch") == "1", path + " holds a state of batch " + meta("batch") +
                                  ", but this generator has batch 1");
  const TensorInfo& conv = f.at("conv");
  const TensorInfo& ssm = f.at("ssm");
  check(conv.numel == state_.conv_size && ssm.numel == state_.ssm_size,
        path + ": the conv/ssm state sizes do not match this model");
  std::vector<float> logits(logits_.size(), 0.0f);
  if (const TensorInfo* t = f.find("logits")) {
    check(t->numel == logits.size(), path + ": the logits size does not match this model");
    f.to_float(*t, logits.data());
  }
  std::vector<int32_t> history;
  if (f.find("history"))
    for (int64_t id : f.to_int64("history")) history.push_back(int32_t(id));
  int64_t n_past = 0;
  uint64_t rng = 0;
  try {
    n_past = std::stoll(meta("n_past"));
    rng = std::stoull(meta("rng"));
  } catch (const std::exception&) {
    throw Error(path + ": bad n_past or rng metadata");
  }
  check(n_past == 0 || f.find("logits"), path + ": the state has tokens but no logits");

  // Everything is read and checked: only now replace the current state.
  std::vector<float> host(std::max(conv.numel, ssm.numel));
  f.to_float(conv, host.data());
  model_.backend().upload(state_.conv, host.data(), conv.numel);
  f.to_float(ssm, host.data());
  model_.backend().upload(state_.ssm, host.data(), ssm.numel);
  logits_ = std::move(logits);
  history_ = std::move(history);
  n_past_ = n_past;
  sampler_.set_rng_state(rng);
}

}  // namespace bhasa
