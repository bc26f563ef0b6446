/* A C host that keeps SIGPIPE's default action (which ends the process), as a plain C app does;
 * Ruby, the BEAM and Rust programs ignore SIGPIPE, so only a program like this one shows it. It
 * starts the agent with the configuration in the environment, waits (at most 10 s) until diagnose
 * reports it the leader, prints "sigpipe_leader: leader", counts `sigpipe_host` once a line read
 * from stdin until stdin closes, stops, and prints "sigpipe_leader: all checks passed". Meanwhile
 * tests/rogue_peers.rs has peers stop reading right after sending, so that the leader's answers
 * are written into sockets that take nothing more: a write that raised SIGPIPE there would end this
 * process (the test would see signal 13). */
#define _POSIX_C_SOURCE 200809L
#define CHECK_NAME "sigpipe_leader"
#include <appsignal.h>
#include <signal.h>
#include <time.h>

#include "check.h"

int main(void) {
  struct timespec pause = {0, 10 * 1000 * 1000};
  char line[256];
  int leader = 0;
  signal(SIGPIPE, SIG_DFL);
  appsignal_start();
  for (int tries = 0; tries < 1000 && !leader; tries++) {
    leader = contains(appsignal_diagnose(), "\"role\":\"leader\"");
    if (!leader) nanosleep(&pause, NULL);
  }
  CHECK(leader, "this process leads");
  printf("sigpipe_leader: %s\n", leader ? "leader" : "not leader");
  fflush(stdout);
  while (fgets(line, sizeof line, stdin)) appsignal_increment_counter(str("sigpipe_host"), 1.0, NULL);
  appsignal_stop();
  if (failures) return 1;
  printf("sigpipe_leader: all checks passed\n");
  return 0;
}
