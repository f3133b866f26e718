#include "train/signals.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>

namespace bhasa {

static volatile sig_atomic_t g_stop_count = 0;
static volatile sig_atomic_t g_stop_signal = 0;
static struct sigaction g_old_int, g_old_term;
static bool g_installed = false;

// Async-signal-safe: only sig_atomic_t stores, write() and _exit().
static void on_stop_signal(int sig) {
  g_stop_signal = sig;
  g_stop_count = g_stop_count + 1;
  if (g_stop_count >= 2) {
    static const char msg[] = "\nsecond interrupt: exiting now; the last saved checkpoint is intact\n";
    ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
    ::_exit(130);
  }
  static const char msg[] =
      "\ninterrupt: finishing this step and saving a checkpoint (Ctrl+C again to quit at once)\n";
  ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
}

void install_stop_handlers() {
  g_stop_count = 0;
  g_stop_signal = 0;
  if (g_installed) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a signal must not make a checkpoint write fail with EINTR
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
  g_installed = true;
}

void remove_stop_handlers() {
  if (!g_installed) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
  g_installed = false;
}

bool stop_requested() { return g_stop_count > 0; }
int stop_signal() { return g_stop_signal; }

}  // namespace bhasa
