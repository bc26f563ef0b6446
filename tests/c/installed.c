/* Built against an installed libappsignal with `pkg-config --cflags --libs appsignal` (see
 * tests/install.rs): starts the agent with the configuration in the environment, counts `installed`
 * three times, waits (at most 10 s) until diagnose reports it elected, prints that role, stops.
 * Prints "installed: role <role>" and "installed: all checks passed", or exits 1. */
#define _POSIX_C_SOURCE 200809L
#define CHECK_NAME "installed"
#include <appsignal.h>
#include <time.h>

#include "check.h"

int main(void) {
  char role[32] = "";
  struct timespec pause = {0, 10 * 1000 * 1000};
  appsignal_start();
  for (int i = 0; i < 3; i++) appsignal_increment_counter(str("installed"), 1.0, NULL);
  for (int tries = 0; tries < 1000; tries++) {
    appsignal_string_t report = appsignal_diagnose();
    CHECK(contains(report, "\"leader_election\""), "diagnose returns the report");
    role_of(report, role, sizeof role);
    if (strcmp(role, "leader") == 0 || strcmp(role, "client") == 0) break;
    nanosleep(&pause, NULL);
  }
  printf("installed: role %s\n", role);
  appsignal_stop();
  if (failures) return 1;
  printf("installed: all checks passed\n");
  return 0;
}
