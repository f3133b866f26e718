// The training step as graphs: a training plan's forward stack (embedding to the final
// norm) and its backward are captured once and replayed, so the GPU runs them without
// the ~1.5 us the stream leaves between each of ~600 kernels. The head and its loss
// (head_loss) stay eager between them: they hand the loss to the host.
#include "model/mamba.h"

namespace bhasa {

void MambaLM::set_train_graphs(bool on) {
  train_graphs_ = on;
  if (!on) release_train_graphs();
}

void MambaLM::release_train_graphs() {
  for (TrainGraph* g : {&fwd_graph_, &bwd_graph_}) {
    if (g->handle >= 0) be_.graph_destroy(g->handle);
    *g = TrainGraph{};
  }
}

void MambaLM::run_captured(TrainGraph& g, bool allowed, const std::function<void()>& body) {
  if (!allowed || !train_graphs_ || g.failed || !be_.graphs_for_training()) return body();
  // The GEMMs read the weights' bf16 mirror at a fixed address (Backend::freeze_weights):
  // the optimizer refreshes it after each update; this makes sure of it for every replay.
  be_.freeze_weights(params_, layout_.total);
  if (g.handle >= 0 && !be_.graph_current(g.handle)) {  // captured before a scratch buffer moved
    be_.graph_destroy(g.handle);
    g.handle = -1;
  }
  if (g.handle < 0) {
    if (g.runs++ == 0) return body();
    be_.graph_begin_capture();
    try {
      body();
      g.handle = be_.graph_end_capture();
    } catch (...) {  // something in the step cannot be captured: stay eager from now on
      try {
        be_.graph_end_capture();
      } catch (...) {
      }
      g.failed = true;
      return body();
    }
  }
  be_.graph_replay(g.handle);
}

}  // namespace bhasa
