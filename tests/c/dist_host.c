/* The host of tests/dist.rs's extension test, in the place of a Ruby or Erlang VM: it does not
 * link libappsignal; it dlopens the shared object given as argv[1] (tests/c/dist_worker.c built
 * with -DDIST_WORKER_EXTENSION and libappsignal.a linked in, as a gem's extension is) and runs its
 * dist_worker_run(DIST_INDEX, DIST_COUNT). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  const char *index = getenv("DIST_INDEX"), *count = getenv("DIST_COUNT");
  if (argc != 2 || !index || !count) {
    fprintf(stderr, "usage: DIST_INDEX=i DIST_COUNT=n dist_host extension.so\n");
    return 2;
  }
  void *extension = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!extension) {
    fprintf(stderr, "dist_host: %s\n", dlerror());
    return 1;
  }
  int (*run)(int, long);
  *(void **)(&run) = dlsym(extension, "dist_worker_run");
  if (!run) {
    fprintf(stderr, "dist_host: %s\n", dlerror());
    return 1;
  }
  return run(atoi(index), atol(count));
}
