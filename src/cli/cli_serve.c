/* paddock serve, and the keys that let clients in. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api.h"
#include "cli_int.h"

/* A duration: a number with an optional s, m, h or d suffix (bare numbers are seconds). */
static int
parse_duration(const char *what, const char *s, int64_t *ms_out, struct err **errp)
{
    char *end = NULL;
    double v;
    double mult = 1000;
    bool number;

    if (s == NULL || s[0] == '\0')
        return err_set(errp, ERR_INVALID, 0, "%s: empty duration", what);
    v = strtod(s, &end);
    number = end != s && v >= 0;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mult = 60e3, end++;
    else if (*end == 'h')
        mult = 3600e3, end++;
    else if (*end == 'd')
        mult = 86400e3, end++;
    /* strtod takes "nan", "inf" and 1e300 too: none converts to an integer. */
    if (!number || *end != '\0' || !isfinite(v) || v * mult > 9e18)
        return err_set(errp, ERR_INVALID, 0, "%s: '%s' is not a duration (e.g. 90s, 15m, 7d)",
                       what, s);
    *ms_out = (int64_t)(v * mult);
    return 0;
}

static const char *
env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : dflt;
}

/* A growable list of owned strings. */
struct strlist {
    char **v;
    size_t n;
};

static void
strlist_add(struct strlist *l, const char *s)
{
    l->v = xrealloc(l->v, (l->n + 2) * sizeof(*l->v));
    l->v[l->n++] = xstrdup(s);
    l->v[l->n] = NULL;
}

static void
strlist_split(struct strlist *l, const char *csv)
{
    while (csv != NULL && *csv != '\0') {
        size_t n = strcspn(csv, ",");
        if (n > 0) {
            cleanup_free char *one = xstrndup(csv, n);
            strlist_add(l, one);
        }
        csv += n;
        if (*csv == ',')
            csv++;
    }
}

static void
strlist_free(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

int
cli__serve(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        { "listen", required_argument, NULL, 'L' },
        { "skills-dir", required_argument, NULL, 'S' },
        { "public-url", required_argument, NULL, 'P' },
        { "idle-after", required_argument, NULL, 'i' },
        { "offline-after", required_argument, NULL, 'o' },
        { "expire-after", required_argument, NULL, 'x' },
        { "max-upload", required_argument, NULL, 'm' },
        { "header-timeout", required_argument, NULL, 't' },
        { "egress-resolve", required_argument, NULL, 'R' },
        { "egress-allow-cidr", required_argument, NULL, 'A' },
        { "egress-upstream-ca", required_argument, NULL, 'C' },
        { "egress-resolv-conf", required_argument, NULL, 'D' },
        { "egress-connect-timeout", required_argument, NULL, 'T' },
        { "egress-header-timeout", required_argument, NULL, 'H' },
        { "egress-idle-timeout", required_argument, NULL, 'I' },
        { "egress-conn-rate", required_argument, NULL, 'N' },
        { "log-format", required_argument, NULL, 'F' },
        { "log-level", required_argument, NULL, 'V' },
        { "warm-pool", required_argument, NULL, 'w' },
        { "model", required_argument, NULL, 'M' },
        { "workers", required_argument, NULL, 'W' },
        { "max-per-key", required_argument, NULL, 'K' },
        { "retention", required_argument, NULL, 'r' },
        { "prices", required_argument, NULL, 'p' },
        { NULL, 0, NULL, 0 },
    };
    enum log_format format = g->format;
    const char *workers = env_or("PADDOCK_WORKERS", "8");
    const char *perkey = env_or("PADDOCK_MAX_PER_KEY", "64");
    const char *retention = env_or("PADDOCK_RETENTION", "55d");
    enum log_level level = g->level_given ? common_log_level : LOG_LEVEL_INFO;
    struct strlist resolve = {0}, allow = {0};
    struct api_config cfg;
    const char *idle = env_or("PADDOCK_IDLE_AFTER", "15m");
    const char *offline = env_or("PADDOCK_OFFLINE_AFTER", "1h");
    const char *expire = env_or("PADDOCK_EXPIRE_AFTER", "7d");
    const char *maxup = env_or("PADDOCK_MAX_UPLOAD", "2G");
    const char *htimeout = env_or("PADDOCK_HEADER_TIMEOUT", "10s");
    const char *ctimeout = env_or("PADDOCK_EGRESS_CONNECT_TIMEOUT", "10s");
    const char *ehtimeout = env_or("PADDOCK_EGRESS_HEADER_TIMEOUT", "30s");
    const char *eitimeout = env_or("PADDOCK_EGRESS_IDLE_TIMEOUT", "10m");
    const char *crate = env_or("PADDOCK_EGRESS_CONN_RATE", "100");
    const char *warm = env_or("PADDOCK_WARM_POOL", "2");
    struct err *e = NULL;
    int c;

    memset(&cfg, 0, sizeof(cfg));
    cfg.data_dir = g->data_dir;
    cfg.storage_size = g->storage_size;
    cfg.listen = env_or("PADDOCK_LISTEN", "127.0.0.1:8080");
    cfg.skills_dir = env_or("PADDOCK_SKILLS_DIR", NULL);
    cfg.public_url = env_or("PADDOCK_PUBLIC_URL", NULL);
    cfg.default_model = env_or("PADDOCK_MODEL", NULL);
    cfg.prices_file = env_or("PADDOCK_PRICES", NULL);
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'L':
            cfg.listen = optarg;
            break;
        case 'S':
            cfg.skills_dir = optarg;
            break;
        case 'P':
            cfg.public_url = optarg;
            break;
        case 'i':
            idle = optarg;
            break;
        case 'o':
            offline = optarg;
            break;
        case 'x':
            expire = optarg;
            break;
        case 'm':
            maxup = optarg;
            break;
        case 't':
            htimeout = optarg;
            break;
        case 'R':
            strlist_add(&resolve, optarg);
            break;
        case 'A':
            strlist_add(&allow, optarg);
            break;
        case 'C':
            cfg.egress_upstream_ca = optarg;
            break;
        case 'D':
            cfg.egress_resolv_conf = optarg;
            break;
        case 'T':
            ctimeout = optarg;
            break;
        case 'H':
            ehtimeout = optarg;
            break;
        case 'I':
            eitimeout = optarg;
            break;
        case 'N':
            crate = optarg;
            break;
        case 'w':
            warm = optarg;
            break;
        case 'M':
            cfg.default_model = optarg;
            break;
        case 'W':
            workers = optarg;
            break;
        case 'K':
            perkey = optarg;
            break;
        case 'r':
            retention = optarg;
            break;
        case 'p':
            cfg.prices_file = optarg;
            break;
        case 'F':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0) {
                strlist_free(&resolve);
                strlist_free(&allow);
                return cli__usage("--log-format must be text or json");
            }
            format = strcmp(optarg, "json") == 0 ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
            break;
        case 'V': {
            static const char *const names[] = {"error", "warn", "info", "debug"};
            int found = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(optarg, names[i]) == 0)
                    found = i;
            if (found < 0) {
                strlist_free(&resolve);
                strlist_free(&allow);
                return cli__usage("--log-level must be error, warn, info or debug");
            }
            level = (enum log_level)found;
            break;
        }
        default:
            strlist_free(&resolve);
            strlist_free(&allow);
            return 2;
        }
    }
    if (optind != argc) {
        strlist_free(&resolve);
        strlist_free(&allow);
        return cli__usage("serve takes no arguments");
    }
    /* The variables add to the flags (comma-separated lists). */
    strlist_split(&resolve, getenv("PADDOCK_EGRESS_RESOLVE"));
    strlist_split(&allow, getenv("PADDOCK_EGRESS_ALLOW_CIDR"));
    if (cfg.egress_upstream_ca == NULL)
        cfg.egress_upstream_ca = env_or("PADDOCK_EGRESS_UPSTREAM_CA", NULL);
    if (cfg.egress_resolv_conf == NULL)
        cfg.egress_resolv_conf = env_or("PADDOCK_EGRESS_RESOLV_CONF", NULL);
    cfg.egress_resolve = (const char *const *)resolve.v;
    cfg.n_egress_resolve = resolve.n;
    cfg.egress_allow = (const char *const *)allow.v;
    cfg.n_egress_allow = allow.n;
    if (parse_duration("--idle-after", idle, &cfg.lc.idle_ms, &e) < 0 ||
        parse_duration("--offline-after", offline, &cfg.lc.offline_ms, &e) < 0 ||
        parse_duration("--expire-after", expire, &cfg.lc.expire_ms, &e) < 0 ||
        parse_duration("--header-timeout", htimeout, &cfg.header_timeout_ms, &e) < 0 ||
        parse_duration("--retention", retention, &cfg.retention_ms, &e) < 0 ||
        util_parse_size(maxup, &cfg.max_upload, &e) < 0) {
        strlist_free(&resolve);
        strlist_free(&allow);
        return cli__fail(e);
    }
    {
        /* The egress proxy's timers, each within a range that keeps it meaningful. */
        const struct {
            const char *flag, *value, *range;
            int64_t *ms, min_ms, max_ms;
        } timers[] = {
            {"--egress-connect-timeout", ctimeout, "0.1s to 1h", &cfg.egress_connect_timeout_ms,
             100, 3600 * 1000},
            {"--egress-header-timeout", ehtimeout, "1s to 1h", &cfg.egress_header_timeout_ms,
             1000, 3600 * 1000},
            {"--egress-idle-timeout", eitimeout, "1s to 7d", &cfg.egress_idle_timeout_ms, 1000,
             7 * 86400 * 1000LL},
        };
        for (size_t i = 0; i < sizeof(timers) / sizeof(timers[0]); i++) {
            int bad = parse_duration(timers[i].flag, timers[i].value, timers[i].ms, &e) < 0;
            err_free(e);
            e = NULL;
            if (bad || *timers[i].ms < timers[i].min_ms || *timers[i].ms > timers[i].max_ms) {
                strlist_free(&resolve);
                strlist_free(&allow);
                return cli__usage("%s must be from %s, not '%s'", timers[i].flag,
                                  timers[i].range, timers[i].value);
            }
        }
    }
    {
        /* The counts, each within its range. */
        uint64_t warm_n = 0, workers_n = 0, perkey_n = 0, rate_n = 0;
        const struct {
            const char *flag, *value;
            uint64_t min, max, *out;
        } counts[] = {
            { "--warm-pool", warm, 0, 64, &warm_n },
            { "--workers", workers, 1, 1024, &workers_n },
            { "--max-per-key", perkey, 1, 1000000, &perkey_n },
            { "--egress-conn-rate", crate, 1, 100000, &rate_n },
        };
        for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
            int bad = util_parse_u64(counts[i].value, counts[i].max, counts[i].out, &e) < 0;
            err_free(e);
            e = NULL;
            if (bad || *counts[i].out < counts[i].min) {
                strlist_free(&resolve);
                strlist_free(&allow);
                return cli__usage("%s must be an integer from %llu to %llu, not '%s'",
                                  counts[i].flag, (unsigned long long)counts[i].min,
                                  (unsigned long long)counts[i].max, counts[i].value);
            }
        }
        cfg.warm_pool = (size_t)warm_n;
        cfg.workers = (unsigned)workers_n;
        cfg.per_key_max = (unsigned)perkey_n;
        cfg.egress_conn_rate = (unsigned)rate_n;
    }
    cfg.lc.count_ms = 2000;
    log_init(NULL, level, format);
    c = api_serve(&cfg, &e);
    strlist_free(&resolve);
    strlist_free(&allow);
    if (c < 0)
        return cli__fail(e);
    return 0;
}

static int
keys_create(struct store *s, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'},
        {"project", required_argument, NULL, 'p'},
        {"scope", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    const char *name = NULL, *project = "default";
    const char *scopes[32];
    size_t n = 0;
    cleanup_free char *key = NULL;
    struct err *e = NULL;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            name = optarg;
            break;
        case 'p':
            project = optarg;
            break;
        case 's':
            if (n == 32)
                return cli__usage("at most 32 --scope options");
            scopes[n++] = optarg;
            break;
        default:
            return 2;
        }
    }
    if (name == NULL || optind != argc)
        return cli__usage("keys create --name NAME [--project P] --scope S [--scope S]...");
    if (api_key_create(s, name, project, scopes, n, &key, &e) < 0)
        return cli__fail(e);
    printf("created key '%s' for project '%s'; it is shown only now:\n%s\n", name, project, key);
    explicit_bzero(key, strlen(key));
    return 0;
}

static int
keys_ls(struct store *s, int argc, char **argv)
{
    cleanup_free struct store_key *v = NULL;
    size_t n = 0;
    struct err *e = NULL;
    bool json = argc == 2 && strcmp(argv[1], "--json") == 0;

    if (argc > 2 || (argc == 2 && !json))
        return cli__usage("keys ls [--json]");
    if (store_key_list(s, &v, &n, &e) < 0)
        return cli__fail(e);
    if (json) {
        json_t *arr = json_array();
        char *out;
        for (size_t i = 0; i < n; i++) {
            char t[40];
            util_format_time(v[i].created_ms, t, sizeof(t));
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:s, s:s, s:b}", "name",
                                                 v[i].name, "project", v[i].project, "scopes",
                                                 v[i].scopes, "prefix", v[i].prefix, "created", t,
                                                 "revoked", v[i].revoked_ms != 0));
        }
        out = json_dumps(arr, JSON_INDENT(2));
        printf("%s\n", out);
        free(out);
        json_decref(arr);
        return 0;
    }
    printf("%-20s %-16s %-14s %-8s %s\n", "NAME", "PROJECT", "PREFIX", "STATE", "SCOPES");
    for (size_t i = 0; i < n; i++)
        printf("%-20s %-16s %-14s %-8s %s\n", v[i].name, v[i].project, v[i].prefix,
               v[i].revoked_ms ? "revoked" : "active", v[i].scopes);
    return 0;
}

int
cli__keys(const struct cli_global *g, int argc, char **argv)
{
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;
    int rc;

    if (argc < 2)
        return cli__usage("keys create|ls|revoke");
    if ((rc = cli__open(g, &ctx)) != 0)
        return rc;
    if (strcmp(argv[1], "create") == 0) {
        rc = keys_create(env_store(ctx), argc - 1, argv + 1);
    } else if (strcmp(argv[1], "ls") == 0) {
        rc = keys_ls(env_store(ctx), argc - 1, argv + 1);
    } else if (strcmp(argv[1], "revoke") == 0) {
        if (argc != 3)
            rc = cli__usage("keys revoke NAME");
        else if (store_key_revoke(env_store(ctx), argv[2], &e) < 0)
            rc = cli__fail(e);
        else
            printf("revoked key '%s'\n", argv[2]);
    } else {
        rc = cli__usage("unknown keys command '%s'", argv[1]);
    }
    env_ctx_close(ctx);
    return rc;
}
