// Continue a prompt with a model directory, using only the public API.
//   example_generate MODEL_DIR "ROMEO:" [max_new_tokens]
// Streams the continuation, then shows that a saved state continues identically.
#include <bhasa/bhasa.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR PROMPT [MAX_NEW_TOKENS]\n", argv[0]);
    return 2;
  }
  try {
    const int n = argc > 3 ? std::atoi(argv[3]) : 100;
    bhasa::Model model = bhasa::Model::load(argv[1]);
    bhasa::Session session(model, {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1});
    session.feed(argv[2]);
    session.save_state("example_generate.state");

    auto print = [](std::string_view s) { std::cout << s << std::flush; };
    std::string first = session.generate(n, {}, print);
    std::cout << "\n";

    // Restoring the state after the prompt replays the same continuation (RNG included).
    session.load_state("example_generate.state");
    std::string again = session.generate(n);
    std::cout << (again == first ? "restored state: same continuation\n" : "restored state: DIFFERENT\n");
    return again == first ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
