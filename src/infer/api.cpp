// The public API (include/bhasa/bhasa.h) over the engine: Model = LoadedModel,
// Session = Generator.
#include "bhasa/bhasa.h"

#include "core/error.h"
#include "infer/generator.h"
#include "infer/model_loader.h"

namespace bhasa {

struct Model::Impl {
  LoadedModel m;
};

Model Model::load(const std::string& dir, const std::string& device, int threads) {
  auto impl = std::make_shared<Impl>();
  impl->m = load_model(dir, device, threads);
  return Model(std::move(impl));
}

bool Model::has_tokenizer() const { return impl_->m.tokenizer != nullptr; }

std::vector<int32_t> Model::tokenize(std::string_view text) const {
  check(has_tokenizer(), impl_->m.dir + " has no tokenizer.json: use token ids");
  return impl_->m.tokenizer->encode(text);
}

std::string Model::detokenize(const std::vector<int32_t>& ids) const {
  check(has_tokenizer(), impl_->m.dir + " has no tokenizer.json: use token ids");
  return impl_->m.tokenizer->decode(ids);
}

int Model::vocab_size() const { return impl_->m.model->config().vocab_size; }
size_t Model::num_params() const { return impl_->m.model->num_params(); }

struct Session::Impl {
  std::shared_ptr<Model::Impl> model;  // keeps the weights alive as long as the session
  Generator gen;
  Impl(std::shared_ptr<Model::Impl> m, const SamplerOptions& o)
      : model(std::move(m)), gen(*model->m.model, model->m.tokenizer.get(), o) {}
};

Session::Session(const Model& model, const Sampling& s) {
  SamplerOptions o;
  o.temperature = s.temperature;
  o.top_k = s.top_k;
  o.top_p = s.top_p;
  o.repeat_penalty = s.repeat_penalty;
  o.repeat_last_n = s.repeat_last_n;
  o.seed = s.seed;
  impl_ = std::make_unique<Impl>(model.impl_, o);
}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

void Session::feed(std::string_view text) { impl_->gen.feed(text); }
void Session::feed_ids(const std::vector<int32_t>& ids) { impl_->gen.feed(std::span<const int32_t>(ids)); }
int32_t Session::next_token() { return impl_->gen.next(); }

std::string Session::generate(int max_new_tokens, const std::vector<std::string>& stop,
                              const std::function<void(std::string_view)>& on_text) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  o.stop = stop;
  return impl_->gen.generate(o, on_text).text;
}

void Session::set_temperature(float t) { impl_->gen.sampler().set_temperature(t); }
void Session::reset() { impl_->gen.reset(); }
int64_t Session::tokens_seen() const { return impl_->gen.n_past(); }
void Session::save_state(const std::string& path) const { impl_->gen.save_state(path); }
void Session::load_state(const std::string& path) { impl_->gen.load_state(path); }

}  // namespace bhasa
