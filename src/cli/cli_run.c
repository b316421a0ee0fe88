/* paddock run: one interaction of an agent in a sandbox, run in this process. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "agent/agent.h"
#include "api/api.h"
#include "cli_int.h"

struct show {
    bool json;
    bool live;         /* progress on stderr (a terminal) */
    char *last_output; /* text of the last model_output */
    struct model_usage u;
    double cost;
    int64_t live_idx; /* step whose deltas are being shown, -1 none */
};

static void
live_step_start(struct show *s, json_t *ev)
{
    json_t *step = json_object_get(ev, "step");
    const char *type = json_string_value(json_object_get(step, "type"));

    if (type == NULL)
        return;
    s->live_idx = -1;
    if (strcmp(type, "code_execution_call") == 0) {
        const char *code =
            json_string_value(json_object_get(json_object_get(step, "arguments"), "code"));
        fprintf(stderr, "\033[1;36m$ %s\033[0m\n", code != NULL ? code : "");
    } else if (strcmp(type, "code_execution_result") == 0) {
        s->live_idx = json_integer_value(json_object_get(ev, "index"));
    } else if (strcmp(type, "function_call") == 0) {
        cleanup_free char *args = json_dumps(json_object_get(step, "arguments"), JSON_COMPACT);
        fprintf(stderr, "\033[1;36m%s %.200s\033[0m\n",
                json_string_value(json_object_get(step, "name")), args != NULL ? args : "");
    } else if (strcmp(type, "thought") == 0) {
        s->live_idx = json_integer_value(json_object_get(ev, "index"));
    }
}

static void
observe(void *arg, const char *iid, json_t *ev)
{
    struct show *s = arg;
    const char *type = json_string_value(json_object_get(ev, "event_type"));

    (void)iid;
    if (s->json) {
        cleanup_free char *line = json_dumps(ev, JSON_COMPACT);
        printf("%s\n", line);
        fflush(stdout);
        return;
    }
    if (type == NULL)
        return;
    if (strcmp(type, "step.delta") == 0) {
        json_t *d = json_object_get(ev, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        if (dt != NULL && strcmp(dt, "text") == 0) {
            free(s->last_output);
            s->last_output = xstrdup(json_string_value(json_object_get(d, "text")));
        }
        if (s->live && dt != NULL &&
            json_integer_value(json_object_get(ev, "index")) == s->live_idx) {
            if (strcmp(dt, "code_execution_result") == 0)
                fprintf(stderr, "\033[2m%s\033[0m",
                        json_string_value(json_object_get(d, "result")));
            else if (strcmp(dt, "thought_summary") == 0)
                fprintf(stderr, "\033[2;3m%s\033[0m\n",
                        json_string_value(json_object_get(json_object_get(d, "content"), "text")));
        }
        return;
    }
    if (!s->live)
        return;
    if (strcmp(type, "step.start") == 0) {
        live_step_start(s, ev);
    } else if (strcmp(type, "step.stop") == 0) {
        json_t *u = json_object_get(ev, "usage");
        if (u != NULL) {
            s->u.input += json_integer_value(json_object_get(u, "total_input_tokens"));
            s->u.output += json_integer_value(json_object_get(u, "total_output_tokens"));
            s->u.total += json_integer_value(json_object_get(u, "total_tokens"));
            s->cost += json_number_value(json_object_get(u, "total_cost_usd"));
            fprintf(stderr, "\033[2m[%lld tokens so far", (long long)s->u.total);
            if (s->cost > 0)
                fprintf(stderr, ", $%.4f", s->cost);
            fprintf(stderr, "]\033[0m\n");
        }
    } else if (strcmp(type, "interaction.status_update") == 0) {
        fprintf(stderr, "\033[2m[%s]\033[0m\n", json_string_value(json_object_get(ev, "status")));
    }
}

int
cli__run(const struct cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        { "env", required_argument, NULL, 'e' },
        { "agent", required_argument, NULL, 'a' },
        { "model", required_argument, NULL, 'm' },
        { "json", no_argument, NULL, 'j' },
        { "max-steps", required_argument, NULL, 's' },
        { "timeout", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 },
    };
    const char *env = NULL, *agent = AGENT_BUILTIN_A, *model = getenv("PADDOCK_MODEL");
    const char *steps = NULL, *timeout = NULL;
    struct show s = { .live_idx = -1 };
    struct model_config mc;
    struct agent_options o;
    struct agent_caller who = { "default", "cli" };
    struct env_ctx *ctx = NULL;
    struct err *e = NULL;
    json_t *body, *it = NULL;
    char id[40];
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'e':
            env = optarg;
            break;
        case 'a':
            agent = optarg;
            break;
        case 'm':
            model = optarg;
            break;
        case 'j':
            s.json = true;
            break;
        case 's':
            steps = optarg;
            break;
        case 't':
            timeout = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc - 1)
        return cli__usage("run takes one task, e.g. paddock run \"count the files in /usr/bin\"");
    s.live = !s.json && isatty(2);
    body = json_pack("{s:s, s:s, s:{s:s}}", "agent", agent, "input", argv[optind], "agent_config",
                     "type", "antigravity");
    if (model != NULL && model[0] != '\0')
        json_object_set_new(json_object_get(body, "agent_config"), "model", json_string(model));
    if (steps != NULL)
        json_object_set_new(json_object_get(body, "agent_config"), "max_steps", json_string(steps));
    if (timeout != NULL)
        json_object_set_new(json_object_get(body, "agent_config"), "timeout_s",
                            json_string(timeout));
    if (env != NULL)
        json_object_set_new(body, "environment", json_string(env));
    if ((rc = cli__open(g, &ctx)) != 0) {
        json_decref(body);
        return rc;
    }
    model_config_from_env(&mc);
    if (getenv("PADDOCK_PRICES") != NULL && model_prices_load(getenv("PADDOCK_PRICES"), &e) < 0)
        goto fail;
    memset(&o, 0, sizeof(o));
    o.data_dir = g->data_dir;
    o.storage_size = g->storage_size;
    o.default_model = model;
    o.model = &mc;
    o.resolve_env = api_env_resolve;
    o.observer = observe;
    o.observer_arg = &s;
    if (agent_run_here(&o, ctx, &who, body, id, &e) < 0)
        goto fail;
    if (agent_interaction_json(env_store(ctx), who.project, id, false, &it, &e) < 0)
        goto fail;
    {
        const char *status = json_string_value(json_object_get(it, "status"));
        const char *envid = json_string_value(json_object_get(it, "environment_id"));
        size_t i;
        json_t *x;
        if (!s.json && s.last_output != NULL)
            printf("%s\n", s.last_output);
        json_array_foreach(json_object_get(it, "errors"), i, x)
            fprintf(stderr, "paddock: %s\n", json_string_value(json_object_get(x, "message")));
        fprintf(stderr, "interaction %s %s; environment %s\n", id, status,
                envid != NULL ? envid : "(none)");
        rc = strcmp(status, "completed") == 0 ? 0 : 1;
    }
    json_decref(it);
    json_decref(body);
    free(s.last_output);
    model_config_clear(&mc);
    env_ctx_close(ctx);
    return rc;
fail:
    json_decref(body);
    free(s.last_output);
    model_config_clear(&mc);
    env_ctx_close(ctx);
    return cli__fail(e);
}
