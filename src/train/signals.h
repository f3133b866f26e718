// Ctrl+C safety for training. The first SIGINT or SIGTERM only raises a flag: the
// trainer finishes the step it is in, saves a checkpoint and exits 0. A second
// SIGINT/SIGTERM exits at once with _exit(130); checkpoints are swapped into place
// atomically, so the last complete one stays intact.
#pragma once

namespace bhasa {

// Installs the handlers (idempotent) and clears the flag.
void install_stop_handlers();
// Restores the previous handlers.
void remove_stop_handlers();
// True once SIGINT or SIGTERM has arrived since install_stop_handlers().
bool stop_requested();
// The signal that asked to stop (0 when none).
int stop_signal();

}  // namespace bhasa
