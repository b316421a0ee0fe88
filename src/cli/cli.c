/* Global options and the top-level command table. */
#include <getopt.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "cli_int.h"

#define DEFAULT_DATA_DIR "/var/lib/paddock"

static const char usage_text[] =
    "usage: paddock [--data-dir DIR] [--log-level LEVEL] [--log-format text|json] COMMAND ...\n"
    "\n"
    "commands:\n"
    "  run [--env ID] [--agent A] [--model M] [--max-steps N] [--timeout S] [--json] \"TASK\"\n"
    "                             run an agent on TASK in a sandbox (needs a model: --model or\n"
    "                             $PADDOCK_MODEL, and that provider's key, e.g. $GEMINI_API_KEY)\n"
    "  demo                       create an environment, run a command in it, show the result\n"
    "  env create [--network disabled|open] [--memory BYTES] [--cpus N] [--pids N]\n"
    "             [--disk BYTES] [--json]\n"
    "  env exec ID [--timeout S] [--cwd DIR] [-e K=V]... [--max-output BYTES] -- CMD [ARG]...\n"
    "  env exec ID [options] -c 'SHELL COMMAND'\n"
    "  env ls [--json]\n"
    "  env stop ID | env start ID | env rm ID\n"
    "  env read ID PATH [--offset N] [--max BYTES]\n"
    "  env write ID PATH [--mode MODE]            (content from stdin)\n"
    "  env files ID [PATH] [--recursive] [--json]\n"
    "  env rm-file ID PATH [--recursive]\n"
    "  env egress ID [--interaction IID] [--json]\n"
    "                             the egress proxy's decisions for an environment\n"
    "  system teardown            stop every environment, remove the warm pool, unmount storage\n"
    "  serve [--listen ADDR:PORT] [--skills-dir DIR] [--public-url URL] [--idle-after DUR]\n"
    "        [--offline-after DUR] [--expire-after DUR] [--max-upload BYTES]\n"
    "        [--header-timeout DUR] [--log-format text|json] [--log-level LEVEL]\n"
    "        [--egress-resolve NAME=IP]... [--egress-allow-cidr CIDR]... [--egress-upstream-ca F]\n"
    "        [--egress-resolv-conf F]\n"
    "        [--egress-connect-timeout DUR] [--egress-header-timeout DUR]\n"
    "        [--egress-idle-timeout DUR] [--egress-conn-rate N]\n"
    "        [--warm-pool N]      (keep N sandboxes started for creates to claim; default 2)\n"
    "        [--model M] [--workers N] [--max-per-key N] [--retention DUR] [--prices FILE]\n"
    "                             serve the HTTP API (docs/API.md) and the egress proxy\n"
    "  keys create --name NAME [--project P] --scope S [--scope S]...\n"
    "  keys ls [--json] | keys revoke NAME\n"
    "\n"
    "The data directory is --data-dir, else $PADDOCK_DATA_DIR, else " DEFAULT_DATA_DIR ".\n"
    "$PADDOCK_STORAGE_SIZE sets the size of its storage image when it is first made.\n"
    "Sizes take K, M, G or T suffixes (powers of 1024).\n"
    "--network open: the environment reaches out only through the egress proxy of a running\n"
    "`paddock serve` (which attaches to it within a second); without a server it has no way\n"
    "out at all.\n";

int
cli__usage(const char *fmt, ...)
{
    va_list ap;

    fputs("paddock: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see paddock --help)\n", stderr);
    return 2;
}

int
cli__fail(struct err *e)
{
    fprintf(stderr, "paddock: %s\n", e->msg);
    err_free(e);
    return CLI_EXIT_ERROR;
}

int
cli__open(const struct cli_global *g, struct env_ctx **out)
{
    struct err *e = NULL;

    if (env_ctx_open(g->data_dir, g->storage_size, out, &e) < 0)
        return cli__fail(e);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(const struct cli_global *g, int argc, char **argv);
} commands[] = {
    {"env", cli__env},
    {"demo", cli__demo},
    {"system", cli__system},
    {"serve", cli__serve},
    {"keys", cli__keys},
    {"run", cli__run},
};

static int
parse_level(const char *s, enum log_level *out)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    for (int i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

/* jansson's blocks are wiped when freed: secrets pass through parsed request bodies, sealed
 * credentials' JSON and token answers, and the parser's own buffers, which no caller can
 * reach to wipe. The cost is a memset per freed block of JSON. */
static void
json_free_wiped(void *p)
{
    if (p != NULL) {
        explicit_bzero(p, malloc_usable_size(p));
        free(p);
    }
}

int
cli_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'},
        {"log-level", required_argument, NULL, 'l'},
        {"log-format", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_global g = {getenv("PADDOCK_DATA_DIR"), 0, false, LOG_FORMAT_TEXT};
    enum log_level level = LOG_LEVEL_WARN;
    const char *fmtenv = getenv("PADDOCK_LOG_FORMAT");
    enum log_format format =
        fmtenv != NULL && strcmp(fmtenv, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
    const char *size = getenv("PADDOCK_STORAGE_SIZE");
    int c;

    json_set_alloc_funcs(malloc, json_free_wiped);
    /* '+': stop at the command, whose options are its own. */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            g.data_dir = optarg;
            break;
        case 'l':
            g.level_given = true;
            if (parse_level(optarg, &level) < 0)
                return cli__usage("--log-level must be error, warn, info or debug");
            break;
        case 'f':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0)
                return cli__usage("--log-format must be text or json");
            format = strcmp(optarg, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            return 2;
        }
    }
    log_init("paddock", level, format);
    g.format = format;
    if (g.data_dir == NULL || g.data_dir[0] == '\0')
        g.data_dir = DEFAULT_DATA_DIR;
    if (size != NULL && size[0] != '\0') {
        struct err *e = NULL;
        if (util_parse_size(size, &g.storage_size, &e) < 0) {
            err_wrap(&e, "PADDOCK_STORAGE_SIZE");
            return cli__fail(e);
        }
    }
    if (optind >= argc) {
        fputs(usage_text, stderr);
        return 2;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(argv[optind], commands[i].name) == 0)
            return commands[i].fn(&g, argc - optind, argv + optind);
    return cli__usage("unknown command '%s'", argv[optind]);
}
