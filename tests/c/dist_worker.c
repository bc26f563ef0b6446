/* One worker process of tests/dist.rs, built for each platform of `make dist` against the archive
 * of that platform. Records, for worker DIST_INDEX, DIST_COUNT increments of the counter
 * `dist_requests{worker=<i>}`, as many values 0..9 of the distribution `dist_latency{worker=<i>}`
 * and the gauge `dist_worker{worker=<i>}` = i; waits (at most 60 s: aarch64 runs under qemu) until
 * diagnose reports this process elected, then stops (which hands everything to the leader, or
 * pushes it when this is the last process). Prints "dist_worker <i>: role <role>" and
 * "dist_worker <i>: all checks passed", or exits 1.
 *
 * Built with -DDIST_WORKER_EXTENSION it has no main: `dist_worker_run` is then the entry point of a
 * shared object that a host program dlopens, as Ruby loads a gem's extension (tests/c/dist_host.c). */
#define _POSIX_C_SOURCE 200809L
#define CHECK_NAME "dist_worker"
#include <appsignal.h>
#include <time.h>

#include "check.h"

int dist_worker_run(int index, long count);

static int role_is_elected(appsignal_string_t report, char *role, size_t size) {
  role_of(report, role, size);
  return strcmp(role, "leader") == 0 || strcmp(role, "client") == 0;
}

int dist_worker_run(int index, long count) {
  char worker[16], role[32] = "";
  struct timespec pause = {0, 10 * 1000 * 1000};
  snprintf(worker, sizeof worker, "%d", index);
  appsignal_start();
  appsignal_data_t *tags = appsignal_data_map_new();
  appsignal_data_map_set_string(tags, str("worker"), str(worker));
  for (long i = 0; i < count; i++) {
    appsignal_increment_counter(str("dist_requests"), 1.0, tags);
    appsignal_add_distribution_value(str("dist_latency"), (double)(i % 10), tags);
  }
  appsignal_set_gauge(str("dist_worker"), (double)index, tags);
  appsignal_free_data(tags);
  for (int tries = 0; tries < 6000; tries++) {
    if (role_is_elected(appsignal_diagnose(), role, sizeof role)) break;
    nanosleep(&pause, NULL);
  }
  printf("dist_worker %d: role %s\n", index, role);
  CHECK(strcmp(role, "leader") == 0 || strcmp(role, "client") == 0, "elected as leader or client");
  appsignal_stop();
  if (failures) return 1;
  printf("dist_worker %d: all checks passed\n", index);
  fflush(stdout);
  return 0;
}

#ifndef DIST_WORKER_EXTENSION
int main(void) {
  const char *index = getenv("DIST_INDEX"), *count = getenv("DIST_COUNT");
  if (!index || !count) {
    fprintf(stderr, "dist_worker: set DIST_INDEX and DIST_COUNT\n");
    return 2;
  }
  return dist_worker_run(atoi(index), atol(count));
}
#endif
