/* paddock env ..., paddock demo, paddock system ... */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli_int.h"

#define CLI_DEFAULT_MAX_OUTPUT (64ULL << 20)

static json_t *
env_json(const struct store_env *e)
{
    char created[40], used[40];

    util_format_time(e->created_ms, created, sizeof(created));
    util_format_time(e->last_used_ms, used, sizeof(used));
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:I, s:f, s:I, s:I}, s:I, s:I, s:s, s:s}", "id",
                     e->id, "state", store_env_state_name(e->state), "network", e->network, "image",
                     e->image, "limits", "memory", (json_int_t)e->memory_bytes, "cpus",
                     e->cpus_milli / 1000.0, "pids", (json_int_t)e->pids, "disk",
                     (json_int_t)e->disk_bytes, "init_pid", (json_int_t)e->init_pid, "host_uid",
                     e->uid_slot == STORE_NO_SLOT ? -1 : (json_int_t)env_host_id(e), "created",
                     created, "last_used", used);
}

static void
print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2));

    puts(s);
    free(s);
    json_decref(j);
}

/* getopt state is global: each subcommand restarts it on its own argv. */
static void
reset_getopt(void)
{
    optind = 0;
    opterr = 1;
}

static int
parse_size_flag(const char *flag, const char *v, uint64_t *out)
{
    struct err *e = NULL;

    if (util_parse_size(v, out, &e) < 0) {
        err_wrap(&e, "--%s", flag);
        return cli__fail(e);
    }
    return 0;
}

static int
parse_cpus(const char *v, uint32_t *out)
{
    char *end = NULL;
    double d;

    errno = 0;
    d = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(d > 0) || d > 1024)
        return cli__usage("--cpus must be a number of CPUs between 0.01 and 1024, not '%s'", v);
    *out = (uint32_t)(d * 1000 + 0.5);
    return 0;
}

static int
cmd_create(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"network", required_argument, NULL, 'n'}, {"memory", required_argument, NULL, 'm'},
        {"cpus", required_argument, NULL, 'c'},    {"pids", required_argument, NULL, 'p'},
        {"disk", required_argument, NULL, 'D'},    {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    struct env_create_opts o = {0};
    struct env_ctx *ctx = NULL;
    struct store_env env;
    struct err *e = NULL;
    bool json = false;
    int c, r;

    reset_getopt();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            o.network = optarg;
            break;
        case 'm':
            if ((r = parse_size_flag("memory", optarg, &o.memory_bytes)) != 0)
                return r;
            break;
        case 'c':
            if ((r = parse_cpus(optarg, &o.cpus_milli)) != 0)
                return r;
            break;
        case 'p': {
            struct err *pe = NULL;
            if (util_parse_u64(optarg, 1u << 22, &o.pids, &pe) < 0) {
                err_wrap(&pe, "--pids");
                return cli__fail(pe);
            }
            break;
        }
        case 'D':
            if ((r = parse_size_flag("disk", optarg, &o.disk_bytes)) != 0)
                return r;
            break;
        case 'j':
            json = true;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc)
        return cli__usage("env create takes no arguments");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_create(ctx, &o, &env, &e);
    env_ctx_close(ctx);
    if (r < 0)
        return cli__fail(e);
    if (json)
        print_json(env_json(&env));
    else
        puts(env.id);
    return 0;
}

static int
cmd_ls(const struct cli_global *g, int argc, char **argv)
{
    struct env_ctx *ctx = NULL;
    struct store_env *v = NULL;
    size_t n = 0;
    struct err *e = NULL;
    bool json = argc == 2 && strcmp(argv[1], "--json") == 0;
    int r;

    if (argc > 2 || (argc == 2 && !json))
        return cli__usage("env ls takes only --json");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_list(ctx, &v, &n, &e);
    env_ctx_close(ctx);
    if (r < 0)
        return cli__fail(e);
    if (json) {
        json_t *a = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(a, env_json(&v[i]));
        print_json(a);
    } else {
        printf("%-32s %-8s %-8s %8s %10s %10s\n", "ID", "STATE", "NETWORK", "CPUS", "MEMORY",
               "DISK");
        for (size_t i = 0; i < n; i++) {
            char mem[32], disk[32];
            util_format_size(v[i].memory_bytes, mem, sizeof(mem));
            util_format_size(v[i].disk_bytes, disk, sizeof(disk));
            printf("%-32s %-8s %-8s %8.2f %10s %10s\n", v[i].id,
                   store_env_state_name(v[i].state), v[i].network, v[i].cpus_milli / 1000.0, mem,
                   disk);
        }
    }
    free(v);
    return 0;
}

/* env stop|start|rm ID */
static int
cmd_lifecycle(const struct cli_global *g, int argc, char **argv)
{
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;
    int r;

    if (argc != 2)
        return cli__usage("env %s takes one environment id", argv[0]);
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    if (strcmp(argv[0], "stop") == 0)
        r = env_stop(ctx, argv[1], &e);
    else if (strcmp(argv[0], "start") == 0)
        r = env_start(ctx, argv[1], NULL, &e);
    else
        r = env_destroy(ctx, argv[1], &e);
    env_ctx_close(ctx);
    return r < 0 ? cli__fail(e) : 0;
}

static int
write_out(int stream, const void *data, size_t len, void *arg)
{
    (void)arg;
    return util_write_all(stream == 2 ? 2 : 1, data, len);
}

struct exec_args {
    struct sandbox_exec_opts o;
    const char **env;
    size_t n_env;
    char **owned; /* strings of env that are ours to free */
    size_t n_owned;
};

static int
parse_exec(int argc, char **argv, struct exec_args *x)
{
    static const struct option opts[] = {
        {"timeout", required_argument, NULL, 't'}, {"cwd", required_argument, NULL, 'C'},
        {"env", required_argument, NULL, 'e'},     {"max-output", required_argument, NULL, 'M'},
        {"shell", required_argument, NULL, 'c'},   {NULL, 0, NULL, 0},
    };
    struct err *e = NULL;
    int c, r;

    reset_getopt();
    /* '+': options end at the first non-option, so the command's own flags are its own. */
    while ((c = getopt_long(argc, argv, "+e:c:", opts, NULL)) != -1) {
        switch (c) {
        case 't': {
            uint64_t s;
            if (util_parse_u64(optarg, 1ULL << 32, &s, &e) < 0) {
                err_wrap(&e, "--timeout (seconds)");
                return cli__fail(e);
            }
            x->o.timeout_ms = s * 1000;
            break;
        }
        case 'C':
            x->o.cwd = optarg;
            break;
        case 'e':
            if (strchr(optarg, '=') == NULL || optarg[0] == '=')
                return cli__usage("-e needs NAME=VALUE, not '%s'", optarg);
            x->env = xrealloc(x->env, (x->n_env + 2) * sizeof(char *));
            x->env[x->n_env++] = optarg;
            x->env[x->n_env] = NULL;
            break;
        case 'M':
            if ((r = parse_size_flag("max-output", optarg, &x->o.max_output)) != 0)
                return r;
            break;
        case 'c':
            x->o.shell = optarg;
            break;
        default:
            return 2;
        }
    }
    return 0;
}

static int
exit_status(const struct sandbox_exec_result *res, const struct sandbox_exec_opts *o)
{
    for (int s = 1; s <= 2; s++)
        if (res->dropped[s] > 0)
            fprintf(stderr,
                    "paddock: %s truncated: %" PRIu64 " bytes past the %" PRIu64
                    "-byte cap were dropped\n",
                    s == 1 ? "stdout" : "stderr", res->dropped[s], o->max_output);
    if (res->timed_out) {
        fprintf(stderr, "paddock: command timed out after %" PRIu64 " s; its process tree was "
                        "killed\n",
                o->timeout_ms / 1000);
        return CLI_EXIT_TIMEOUT;
    }
    if (res->exited)
        return res->code;
    return 128 + res->signal;
}

/* Adds the environment's own variables after the -e ones, which win over them. */
static int
merge_vars(struct env_ctx *ctx, const char *id, struct exec_args *x, struct err **errp)
{
    char **vars = NULL;

    if (env_exec_vars(ctx, id, NULL, &vars, errp) < 0)
        return -1;
    for (size_t i = 0; vars[i] != NULL; i++) {
        size_t kl = strcspn(vars[i], "=") + 1;
        bool given = false;
        for (size_t j = 0; j < x->n_env && !given; j++)
            given = strncmp(x->env[j], vars[i], kl) == 0;
        if (given) {
            free(vars[i]);
            continue;
        }
        x->env = xrealloc(x->env, (x->n_env + 2) * sizeof(char *));
        x->env[x->n_env++] = vars[i];
        x->env[x->n_env] = NULL;
        x->owned = xrealloc(x->owned, (x->n_owned + 1) * sizeof(char *));
        x->owned[x->n_owned++] = vars[i];
    }
    free(vars);
    x->o.env = (const char *const *)x->env;
    return 0;
}

static int
cmd_exec(const struct cli_global *g, int argc, char **argv)
{
    struct exec_args x = {.o = {.stdin_fd = 0, .on_output = write_out,
                                .max_output = CLI_DEFAULT_MAX_OUTPUT}};
    struct sandbox_exec_result res;
    struct env_ctx *ctx = NULL;
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    const char *id;
    int r;

    if (argc < 2 || argv[1][0] == '-')
        return cli__usage("env exec needs an environment id");
    id = argv[1];
    if ((r = parse_exec(argc - 1, argv + 1, &x)) != 0) {
        free(x.env);
        return r;
    }
    x.o.env = x.env;
    if (x.o.shell == NULL) {
        if (optind >= argc - 1) {
            free(x.env);
            return cli__usage("env exec needs a command after '--', or -c 'SHELL COMMAND'");
        }
        x.o.argv = (const char *const *)(argv + 1 + optind);
    } else if (optind < argc - 1) {
        free(x.env);
        return cli__usage("env exec takes either -c or a command, not both");
    }
    if ((r = cli__open(g, &ctx)) != 0) {
        free(x.env);
        return r;
    }
    r = env_use(ctx, id, &dir, &e);
    if (r == 0)
        r = merge_vars(ctx, id, &x, &e);
    env_ctx_close(ctx);
    if (r == 0)
        r = sandbox_exec(dir, &x.o, &res, &e);
    free(x.env);
    for (size_t i = 0; i < x.n_owned; i++)
        free(x.owned[i]);
    free(x.owned);
    if (r < 0)
        return cli__fail(e);
    return exit_status(&res, &x.o);
}

static int
cmd_read(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"offset", required_argument, NULL, 'o'},
        {"max", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    uint64_t offset = 0, max = 0;
    struct env_ctx *ctx = NULL;
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    int c, r;

    reset_getopt();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'o' && (r = parse_size_flag("offset", optarg, &offset)) != 0)
            return r;
        if (c == 'm' && (r = parse_size_flag("max", optarg, &max)) != 0)
            return r;
        if (c != 'o' && c != 'm')
            return 2;
    }
    if (argc - optind != 2)
        return cli__usage("env read takes an environment id and a path");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_use(ctx, argv[optind], &dir, &e);
    env_ctx_close(ctx);
    if (r == 0)
        r = sandbox_file_read(dir, argv[optind + 1], offset, max, write_out, NULL, &e);
    return r < 0 ? cli__fail(e) : 0;
}

static int
cmd_write(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"mode", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    unsigned long mode = 0644;
    struct env_ctx *ctx = NULL;
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    char *end;
    int c, r;

    reset_getopt();
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'm')
            return 2;
        errno = 0;
        mode = strtoul(optarg, &end, 8);
        if (errno != 0 || end == optarg || *end != '\0' || mode > 07777)
            return cli__usage("--mode must be an octal mode such as 0644, not '%s'", optarg);
    }
    if (argc - optind != 2)
        return cli__usage("env write takes an environment id and a path");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_use(ctx, argv[optind], &dir, &e);
    env_ctx_close(ctx);
    if (r == 0)
        r = sandbox_file_write(dir, argv[optind + 1], (unsigned)mode, 0, 0, &e);
    return r < 0 ? cli__fail(e) : 0;
}

static const char *const type_names[] = {"file", "dir", "symlink", "other"};

static int
print_entry(const struct sandbox_file_entry *fe, void *arg)
{
    json_t *arr = arg;
    char mtime[40];

    util_format_time(fe->mtime_ms, mtime, sizeof(mtime));
    if (arr != NULL) {
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", fe->mode);
        json_t *path = json_string(fe->path);
        if (path == NULL) { /* not UTF-8: shown escaped, as in the text listing */
            cleanup_free char *esc = log_escape(fe->path, strlen(fe->path), 4096);
            path = json_string(esc);
        }
        json_array_append_new(arr, json_pack("{s:o, s:s, s:I, s:s, s:s}", "path", path,
                                             "type", type_names[fe->type], "size",
                                             (json_int_t)fe->size, "mode", mode, "mtime", mtime));
        return 0;
    }
    cleanup_free char *esc = log_escape(fe->path, strlen(fe->path), 4096);
    printf("%-7s %04o %12" PRIu64 " %s %s\n", type_names[fe->type], fe->mode, fe->size, mtime,
           esc);
    return 0;
}

static int
cmd_files(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"recursive", no_argument, NULL, 'r'},
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    bool recursive = false, json = false;
    struct env_ctx *ctx = NULL;
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    json_t *arr = NULL;
    const char *path = "/workspace";
    int c, r;

    reset_getopt();
    while ((c = getopt_long(argc, argv, "r", opts, NULL)) != -1) {
        if (c == 'r')
            recursive = true;
        else if (c == 'j')
            json = true;
        else
            return 2;
    }
    if (argc - optind < 1 || argc - optind > 2)
        return cli__usage("env files takes an environment id and an optional path");
    if (argc - optind == 2)
        path = argv[optind + 1];
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_use(ctx, argv[optind], &dir, &e);
    env_ctx_close(ctx);
    if (json)
        arr = json_array();
    if (r == 0)
        r = sandbox_file_list(dir, path, recursive, NULL, 0, print_entry, arr, &e);
    if (r < 0) {
        json_decref(arr);
        return cli__fail(e);
    }
    if (json)
        print_json(arr);
    return 0;
}

static int
cmd_rm_file(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"recursive", no_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    bool recursive = false;
    struct env_ctx *ctx = NULL;
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    int c, r;

    reset_getopt();
    while ((c = getopt_long(argc, argv, "r", opts, NULL)) != -1) {
        if (c != 'r')
            return 2;
        recursive = true;
    }
    if (argc - optind != 2)
        return cli__usage("env rm-file takes an environment id and a path");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_use(ctx, argv[optind], &dir, &e);
    env_ctx_close(ctx);
    if (r == 0)
        r = sandbox_file_delete(dir, argv[optind + 1], recursive, &e);
    return r < 0 ? cli__fail(e) : 0;
}

/*
 * env egress ID [--interaction IID] [--json]: the proxy's decisions for one environment (or
 * one interaction's in it), oldest first. A deleted environment's records are kept for
 * --retention, and shown here too: the operator's account of what a sandbox did outlives the
 * sandbox.
 */
static int
cmd_egress(const struct cli_global *g, int argc, char **argv)
{
    struct env_ctx *ctx = NULL;
    struct store_env env;
    struct err *e = NULL, *gone = NULL;
    bool json = false;
    const char *iid = NULL;
    int64_t after = 0;
    json_t *arr = NULL;
    int r;

    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && !json)
            json = true;
        else if (strcmp(argv[i], "--interaction") == 0 && iid == NULL && i + 1 < argc)
            iid = argv[++i];
        else
            return cli__usage("env egress ID [--interaction IID] [--json]");
    }
    if (argc < 2 || argv[1][0] == '-')
        return cli__usage("env egress ID [--interaction IID] [--json]");
    if (iid != NULL && !util_id_valid("int_", iid))
        return cli__usage("--interaction: '%s' is not an interaction id", iid);
    arr = json ? json_array() : NULL;
    if ((r = cli__open(g, &ctx)) != 0) {
        json_decref(arr);
        return r;
    }
    if (env_get(ctx, argv[1], &env, &e) < 0) {
        if (e->code != ERR_NOT_FOUND || !util_id_valid("env_", argv[1])) {
            env_ctx_close(ctx);
            json_decref(arr);
            return cli__fail(e);
        }
        gone = e; /* reported if there are no records either */
        e = NULL;
        memset(&env, 0, sizeof(env));
        snprintf(env.id, sizeof(env.id), "%s", argv[1]);
    }
    for (;;) {
        cleanup_free struct store_egress *v = NULL;
        size_t n = 0;
        if (store_egress_page(env_store(ctx), env.id, iid, after, 1000, &v, &n, &e) < 0) {
            err_free(gone);
            env_ctx_close(ctx);
            json_decref(arr);
            return cli__fail(e);
        }
        if (gone != NULL) {
            if (n == 0) {
                env_ctx_close(ctx);
                json_decref(arr);
                return cli__fail(gone);
            }
            fprintf(stderr,
                    "paddock: environment %s no longer exists; its records are kept "
                    "for --retention\n",
                    env.id);
            err_free(gone);
            gone = NULL;
        }
        for (size_t i = 0; i < n; i++) {
            char t[40];
            util_format_time(v[i].ts_ms, t, sizeof(t));
            if (json) {
                json_t *j = json_pack("{s:s, s:s, s:i, s:s, s:s, s:s, s:I, s:I}", "time", t,
                                      "host", v[i].host, "port", v[i].port, "method",
                                      v[i].method, "decision", v[i].decision, "reason",
                                      v[i].reason, "bytes_up", (json_int_t)v[i].bytes_up,
                                      "bytes_down", (json_int_t)v[i].bytes_down);
                if (v[i].interaction_id[0] != '\0')
                    json_object_set_new(j, "interaction_id", json_string(v[i].interaction_id));
                json_array_append_new(arr, j);
            } else {
                printf("%s %-5s %-7s %s:%d up=%" PRIu64 " down=%" PRIu64 "%s%s %s\n", t,
                       v[i].decision, v[i].method, v[i].host, v[i].port, v[i].bytes_up,
                       v[i].bytes_down, v[i].interaction_id[0] != '\0' ? " " : "",
                       v[i].interaction_id, v[i].reason);
            }
        }
        if (n < 1000)
            break;
        after = v[n - 1].id;
    }
    env_ctx_close(ctx);
    if (json)
        print_json(arr);
    return 0;
}

static const struct {
    const char *name;
    int (*fn)(const struct cli_global *g, int argc, char **argv);
} env_cmds[] = {
    {"egress", cmd_egress},
    {"create", cmd_create}, {"ls", cmd_ls},       {"stop", cmd_lifecycle},
    {"start", cmd_lifecycle}, {"rm", cmd_lifecycle}, {"exec", cmd_exec},
    {"read", cmd_read},     {"write", cmd_write}, {"files", cmd_files},
    {"rm-file", cmd_rm_file},
};

int
cli__env(const struct cli_global *g, int argc, char **argv)
{
    if (argc < 2)
        return cli__usage("env needs a subcommand");
    for (size_t i = 0; i < sizeof(env_cmds) / sizeof(env_cmds[0]); i++)
        if (strcmp(argv[1], env_cmds[i].name) == 0)
            return env_cmds[i].fn(g, argc - 1, argv + 1);
    return cli__usage("unknown env subcommand '%s'", argv[1]);
}

int
cli__system(const struct cli_global *g, int argc, char **argv)
{
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;
    int r;

    if (argc != 2 || strcmp(argv[1], "teardown") != 0)
        return cli__usage("system takes: teardown");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    r = env_teardown(ctx, &e);
    env_ctx_close(ctx);
    return r < 0 ? cli__fail(e) : 0;
}

int
cli__demo(const struct cli_global *g, int argc, char **argv)
{
    static const char script[] =
        "echo \"hello from $(hostname)\"; id; uname -sr; "
        "echo \"processes visible: $(ls -d /proc/[0-9]* | wc -l)\"; "
        "echo 'print(sum(range(10**6)))' > /workspace/demo.py && python3 /workspace/demo.py; "
        "ls -la /workspace";
    struct sandbox_exec_opts o = {.shell = script, .stdin_fd = -1, .on_output = write_out,
                                  .max_output = CLI_DEFAULT_MAX_OUTPUT, .timeout_ms = 60000};
    struct sandbox_exec_result res;
    struct env_ctx *ctx = NULL;
    struct store_env env;
    struct env_create_opts co = {0};
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    int64_t t0;
    int r;

    (void)argv;
    if (argc != 1)
        return cli__usage("demo takes no arguments");
    if (getenv("PADDOCK_MODEL") != NULL && getenv("PADDOCK_MODEL")[0] != '\0') {
        /* paddock's main job: an agent at work in a sandbox. */
        static char task[] =
            "Find out which Linux distribution, kernel and Python version this sandbox has, "
            "write them as a short Markdown table to /workspace/report.md, show the file, and "
            "say in one sentence what you did.";
        char *av[] = {(char *)(uintptr_t) "run", task, NULL};
        printf("running an agent on %s: %s\n", getenv("PADDOCK_MODEL"), task);
        fflush(stdout);
        return cli__run(g, 2, av);
    }
    printf("No model is set, so this shows the sandbox alone. To see an agent at work in it, "
           "set PADDOCK_MODEL and its key, e.g.\n"
           "  PADDOCK_MODEL=gemini-2.5-flash GEMINI_API_KEY=... ./dev run\n"
           "  PADDOCK_MODEL=openai:NAME OPENAI_BASE_URL=http://127.0.0.1:8081/v1 ./dev run   "
           "(llama.cpp, Ollama, vLLM)\n"
           "  PADDOCK_MODEL=anthropic:NAME ANTHROPIC_API_KEY=... ./dev run\n\n");
    if ((r = cli__open(g, &ctx)) != 0)
        return r;
    t0 = util_mono_ns();
    if (env_create(ctx, &co, &env, &e) < 0) {
        env_ctx_close(ctx);
        return cli__fail(e);
    }
    printf("created environment %s in %.2f ms (data directory %s)\n", env.id,
           (util_mono_ns() - t0) / 1e6, g->data_dir);
    printf("$ %s\n", script);
    fflush(stdout);
    r = env_use(ctx, env.id, &dir, &e);
    if (r == 0)
        r = sandbox_exec(dir, &o, &res, &e);
    if (r == 0)
        printf("exit status %d after %" PRId64 " ms\n", exit_status(&res, &o), res.duration_ms);
    if (r == 0)
        r = env_destroy(ctx, env.id, &e);
    env_ctx_close(ctx);
    if (r < 0)
        return cli__fail(e);
    printf("removed environment %s\n", env.id);
    return 0;
}
