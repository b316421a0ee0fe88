/* Shared by the files of src/cli/. */
#ifndef PADDOCK_CLI_INT_H
#define PADDOCK_CLI_INT_H

#include "env/env.h"

/* Exit statuses of paddock's own failures, as podman and docker use them. */
#define CLI_EXIT_ERROR   125
#define CLI_EXIT_TIMEOUT 124

struct cli_global {
    const char *data_dir;
    uint64_t storage_size;
    bool level_given; /* --log-level was on the command line */
    enum log_format format;
};

/** Prints "paddock: <message>" for e, frees it and returns CLI_EXIT_ERROR. */
int cli__fail(struct err *e);
/** Prints a usage error and returns 2. */
int cli__usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cli__open(const struct cli_global *g, struct env_ctx **out);

int cli__env(const struct cli_global *g, int argc, char **argv);
int cli__demo(const struct cli_global *g, int argc, char **argv);
int cli__system(const struct cli_global *g, int argc, char **argv);
int cli__serve(const struct cli_global *g, int argc, char **argv);
int cli__run(const struct cli_global *g, int argc, char **argv);
int cli__keys(const struct cli_global *g, int argc, char **argv);

#endif
