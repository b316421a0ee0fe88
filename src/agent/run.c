/*
 * The loop of one interaction: build the prompt, call the model, run its tool calls in the
 * environment's sandbox, record each step (and its events) as it happens, check the budgets
 * after every step, and end with a status that says why. Linear history; the calls of one
 * model turn run one after another in the order the model gave them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "agent_int.h"
#include "sandbox/sandbox.h"

/* ------------------------------------------------------------ recording */

static json_t *
event_new(const char *type)
{
    return json_pack("{s:s}", "event_type", type);
}

static int
step_begin(struct agent_run *r, json_t *step, int64_t *idx, struct err **errp)
{
    cleanup_free char *text = json_dumps(step, JSON_COMPACT);
    json_t *ev;

    agent__tx(r);
    if (r->next_step >= AGENT_STEPS_MAX)
        return err_set(errp, ERR_LIMIT, 0, "more than %d steps", AGENT_STEPS_MAX);
    *idx = r->next_step++;
    if (store_step_put(r->st, r->it.id, *idx, text, errp) < 0)
        return -1;
    ev = event_new("step.start");
    json_object_set_new(ev, "index", json_integer(*idx));
    json_object_set(ev, "step", step);
    return agent__emit(r, ev, errp);
}

static int
step_delta(struct agent_run *r, int64_t idx, json_t *delta, struct err **errp)
{
    json_t *ev = event_new("step.delta");

    json_object_set_new(ev, "index", json_integer(idx));
    json_object_set_new(ev, "delta", delta);
    return agent__emit(r, ev, errp);
}

/* The step's final form replaces what step_begin stored; usage (stolen) rides on the stop. */
static int
step_end(struct agent_run *r, int64_t idx, json_t *final, json_t *usage, struct err **errp)
{
    json_t *ev;

    agent__tx(r);
    if (final != NULL) {
        cleanup_free char *text = json_dumps(final, JSON_COMPACT);
        if (store_step_put(r->st, r->it.id, idx, text, errp) < 0) {
            json_decref(usage);
            return -1;
        }
    }
    ev = event_new("step.stop");
    json_object_set_new(ev, "index", json_integer(idx));
    if (usage != NULL)
        json_object_set_new(ev, "usage", usage);
    return agent__emit(r, ev, errp);
}

/* A step that is whole when it starts; step and usage (may be NULL) are stolen. */
static int
step_whole(struct agent_run *r, json_t *step, json_t *usage, struct err **errp)
{
    int64_t idx;
    int rc = step_begin(r, step, &idx, errp);

    if (rc == 0)
        rc = step_end(r, idx, NULL, usage, errp);
    else
        json_decref(usage);
    json_decref(step);
    return rc;
}

static int
set_status(struct agent_run *r, const char *status, struct err **errp)
{
    json_t *ev;

    agent__tx(r);
    snprintf(r->it.status, sizeof(r->it.status), "%s", status);
    r->it.updated_ms = util_now_ms();
    if (store_interaction_update(r->st, &r->it, errp) < 0)
        return -1;
    ev = event_new("interaction.status_update");
    json_object_set_new(ev, "interaction_id", json_string(r->it.id));
    json_object_set_new(ev, "status", json_string(status));
    return agent__emit(r, ev, errp);
}

/* ------------------------------------------------------------------ tools */

static json_t *
builtin_tools(void)
{
    return json_pack(
        "[{s:s, s:s, s:{s:s, s:{s:{s:s, s:s}, s:{s:s, s:s}}, s:[s]}},"
        " {s:s, s:s, s:{s:s, s:{s:{s:s, s:[s,s,s,s], s:s}, s:{s:s, s:s}, s:{s:s, s:s},"
        " s:{s:s, s:s}}, s:[s,s]}}]",
        "name", "bash", "description",
        "Run a bash command in the sandbox; the working directory is /workspace. Returns "
        "stdout and stderr together, and the exit status when it is not 0.",
        "parameters", "type", "object", "properties", "command", "type", "string", "description",
        "the command line, run with bash -c", "timeout_s", "type", "integer", "description",
        "seconds before the command and everything it started are killed", "required", "command",
        "name", "file_system", "description",
        "Read, write, delete or list files in the sandbox. Relative paths are under "
        "/workspace.",
        "parameters", "type", "object", "properties", "operation", "type", "string", "enum", "read",
        "write", "delete", "list", "description", "what to do", "path", "type", "string",
        "description", "the file or directory", "content", "type", "string", "description",
        "the new contents (write)", "recursive", "type", "boolean", "description",
        "list a whole tree / delete a directory", "required", "operation", "path");
}

char *
agent__clip(const char *s, size_t len, size_t max)
{
    size_t head = max / 2, tail = max - head;

    if (len <= max)
        return xstrndup(s, len);
    /* Keep whole UTF-8 sequences at both cuts. */
    while (head > 0 && ((unsigned char)s[head] & 0xc0) == 0x80)
        head--;
    while (tail > 0 && ((unsigned char)s[len - tail] & 0xc0) == 0x80)
        tail--;
    return xasprintf("%.*s\n\n[... %zu characters cut: the output was %zu characters; "
                     "narrow the command to see the middle ...]\n\n%s",
                     (int)head, s, len - head - tail, len, s + len - tail);
}

/* Output of a running command, kept up to a cap and streamed as deltas. */
struct out_acc {
    struct agent_run *r;
    int64_t idx;
    struct buf all;
    uint64_t dropped;
    char pend[4096];
    size_t npend;
    int64_t last_flush_ns;
};

static void
flush_delta(struct out_acc *a, bool all)
{
    size_t n = a->npend, keep;
    cleanup_free char *text = NULL;

    /* A multi-byte character cut by the chunking waits for its other bytes. */
    if (!all) {
        size_t back = 0;
        while (back < 3 && back < n && ((unsigned char)a->pend[n - 1 - back] & 0xc0) == 0x80)
            back++;
        if (back < n && ((unsigned char)a->pend[n - 1 - back] & 0xc0) == 0xc0)
            n -= back + 1;
    }
    if (n == 0)
        return;
    text = agent__utf8(a->pend, n);
    step_delta(a->r, a->idx,
               json_pack("{s:s, s:s}", "type", "code_execution_result", "result", text), NULL);
    keep = a->npend - n;
    memmove(a->pend, a->pend + n, keep);
    a->npend = keep;
    a->last_flush_ns = util_mono_ns();
}

static int
on_output(int stream, const void *data, size_t len, void *arg)
{
    struct out_acc *a = arg;
    const char *p = data;

    (void)stream;
    if (a->all.len + len <= AGENT_TOOL_KEEP_MAX) {
        buf_append(&a->all, p, len, NULL);
    } else {
        size_t room = AGENT_TOOL_KEEP_MAX - a->all.len;
        if (room > 0)
            buf_append(&a->all, p, room, NULL);
        a->dropped += len - room;
    }
    while (len > 0) {
        size_t n = len < sizeof(a->pend) - a->npend ? len : sizeof(a->pend) - a->npend;
        memcpy(a->pend + a->npend, p, n);
        a->npend += n;
        p += n;
        len -= n;
        if (a->npend == sizeof(a->pend))
            flush_delta(a, false);
    }
    if (util_mono_ns() - a->last_flush_ns > 100 * 1000 * 1000)
        flush_delta(a, false);
    return 0;
}

/* A tool's answer: what the model sees and what the step keeps. */
struct tool_out {
    char *text; /* full (capped) output */
    bool is_error;
};

static int64_t
remaining_ms(int64_t deadline)
{
    int64_t left = deadline - util_now_ms();

    return left > 0 ? left : 0;
}

static int
env_dir(struct agent_run *r, char **dir, struct err **errp)
{
    return env_use_owned(r->ctx, r->it.project, r->it.env_id, dir, errp);
}

static void
run_bash(struct agent_run *r, const char *call_id, json_t *args, int64_t deadline,
         struct tool_out *out)
{
    const char *cmd = json_string_value(json_object_get(args, "command"));
    json_t *tmo = json_object_get(args, "timeout_s");
    int64_t timeout_ms = (int64_t)AGENT_BASH_TIMEOUT_S * 1000;
    struct out_acc a = { .r = r, .idx = -1 };
    struct sandbox_exec_result res;
    struct sandbox_exec_opts o;
    struct err *e = NULL;
    cleanup_free char *dir = NULL;
    char **vars = NULL;
    json_t *step;
    int64_t t0;
    int rc;

    /* Clamped before it is multiplied: the model chose the number. */
    if (json_is_integer(tmo) && json_integer_value(tmo) > 0)
        timeout_ms =
            json_integer_value(tmo) > INT64_MAX / 1000 ? INT64_MAX : json_integer_value(tmo) * 1000;
    if (timeout_ms > remaining_ms(deadline))
        timeout_ms = remaining_ms(deadline);
    if (timeout_ms < 1)
        timeout_ms = 1;
    buf_init(&a.all, AGENT_TOOL_KEEP_MAX + 1);
    step = json_pack("{s:s, s:s, s:s}", "type", "code_execution_result", "call_id", call_id,
                     "result", "");
    if (step_begin(r, step, &a.idx, &e) < 0)
        goto fail;
    a.last_flush_ns = util_mono_ns();
    agent__flush(r);
    /* env_dir resumes an idle environment and records the activity. */
    if (env_dir(r, &dir, &e) < 0)
        goto fail;
    if (r->vars == NULL && env_exec_vars(r->ctx, r->it.env_id, r->it.id, &r->vars, &e) < 0)
        goto fail;
    vars = r->vars;
    memset(&o, 0, sizeof(o));
    o.argv = (const char *const[]){ "/bin/bash", "-c", cmd, NULL };
    o.env = (const char *const *)vars;
    o.timeout_ms = (uint64_t)timeout_ms;
    o.max_output = AGENT_TOOL_KEEP_MAX;
    o.stdin_fd = -1;
    o.on_output = on_output;
    o.arg = &a;
    o.cancel = &r->cancel;
    t0 = util_mono_ns();
    rc = sandbox_exec(dir, &o, &res, &e);
    r->tool_ns += util_mono_ns() - t0;
    flush_delta(&a, true);
    if (rc < 0)
        goto fail;
    {
        struct buf b;
        buf_init(&b, AGENT_TOOL_KEEP_MAX + 4096);
        if (a.all.len > 0)
            buf_append(&b, a.all.data, a.all.len, NULL);
        if (a.dropped > 0 || res.dropped[1] + res.dropped[2] > 0)
            buf_printf(&b, NULL, "\n[%llu bytes of output not kept]",
                       (unsigned long long)(a.dropped + res.dropped[1] + res.dropped[2]));
        if (res.timed_out)
            buf_printf(&b, NULL,
                       "\n[timed out after %lld s: the command and everything it "
                       "started were killed]",
                       (long long)(timeout_ms / 1000));
        else if (!res.exited)
            buf_printf(&b, NULL, "\n[killed by signal %d]", res.signal);
        else if (res.code != 0)
            buf_printf(&b, NULL, "\n[exit status %d]", res.code);
        out->is_error = res.timed_out || !res.exited || res.code != 0;
        out->text = agent__utf8(b.data != NULL ? b.data : "", b.len);
        buf_free(&b);
    }
    goto done;
fail:
    out->is_error = true;
    out->text = xasprintf("[the command could not run: %s]", e != NULL ? e->msg : "error");
    err_free(e);
done:
    json_object_set_new(step, "result", json_string(out->text));
    json_object_set_new(step, "is_error", json_boolean(out->is_error));
    if (a.idx >= 0) /* else no step was begun (over the cap): none to end */
        step_end(r, a.idx, step, NULL, NULL);
    json_decref(step);
    buf_free(&a.all);
}

static int
collect(int stream, const void *data, size_t len, void *arg)
{
    (void)stream;
    return buf_append(arg, data, len, NULL);
}

static int
list_entry(const struct sandbox_file_entry *fe, void *arg)
{
    static const char *const types[] = { "file", "dir", "link", "other" };

    return buf_printf(arg, NULL, "%s\t%llu\t%s\n", types[fe->type], (unsigned long long)fe->size,
                      fe->path);
}

static void
run_files(struct agent_run *r, json_t *args, int64_t deadline, struct tool_out *out)
{
    const char *op = json_string_value(json_object_get(args, "operation"));
    const char *path = json_string_value(json_object_get(args, "path"));
    bool recursive = json_is_true(json_object_get(args, "recursive"));
    cleanup_free char *dir = NULL;
    struct err *e = NULL;
    struct buf b;
    int64_t t0;
    int rc = -1;

    buf_init(&b, AGENT_TOOL_KEEP_MAX + 1);
    agent__flush(r);
    t0 = util_mono_ns();
    /* Bounded by what is left of the interaction's wall time as a whole: a handler that a
     * process of the sandbox stops and lets go in turn keeps an operation alive with each
     * keep-alive, without end, otherwise (sandbox_int.h). */
    sandbox_deadline_set(remaining_ms(deadline));
    if (remaining_ms(deadline) == 0) {
        err_set(&e, ERR_TIMEOUT, 0, "the interaction's wall time budget is used up");
    } else if (op == NULL || path == NULL) {
        err_set(&e, ERR_INVALID, 0, "operation and path are required strings");
    } else if (env_dir(r, &dir, &e) < 0) {
        /* e says why */
    } else if (strcmp(op, "read") == 0) {
        rc = sandbox_file_read(dir, path, 0, AGENT_TOOL_KEEP_MAX, collect, &b, &e);
    } else if (strcmp(op, "write") == 0) {
        const char *content = json_string_value(json_object_get(args, "content"));
        int fd;
        if (content == NULL) {
            err_set(&e, ERR_INVALID, 0, "write needs content (a string)");
        } else if ((fd = memfd_create("paddock-write", MFD_CLOEXEC)) < 0) {
            err_set(&e, ERR_IO, errno, "memfd");
        } else {
            size_t n = strlen(content);
            if (util_write_all(fd, content, n) < 0 || lseek(fd, 0, SEEK_SET) < 0)
                err_set(&e, ERR_IO, errno, "stage content");
            else if ((rc = sandbox_file_write(dir, path, 0644, fd, 64ULL << 20, &e)) == 0)
                buf_printf(&b, NULL, "wrote %zu bytes to %s", n, path);
            close(fd);
        }
    } else if (strcmp(op, "delete") == 0) {
        rc = sandbox_file_delete(dir, path, recursive, &e);
        if (rc == 0)
            buf_printf(&b, NULL, "deleted %s", path);
    } else if (strcmp(op, "list") == 0) {
        rc = sandbox_file_list(dir, path, recursive, NULL, 5000, list_entry, &b, &e);
    } else {
        err_set(&e, ERR_INVALID, 0, "unknown operation '%s' (read, write, delete or list)", op);
    }
    sandbox_deadline_set(0);
    r->tool_ns += util_mono_ns() - t0;
    if (rc < 0) {
        out->is_error = true;
        out->text = xasprintf("%s", e != NULL ? e->msg : "failed");
        err_free(e);
    } else {
        out->text = agent__utf8(b.data != NULL ? b.data : "", b.len);
    }
    buf_free(&b);
}

/* ----------------------------------------------------------------- prompt */

static char *
read_small(struct agent_run *r, const char *dir, const char *path)
{
    struct buf b;
    char *s = NULL;

    buf_init(&b, AGENT_PROMPT_FILE_MAX + 1);
    /* The sandbox wrote it: any bytes at all, NULs and Latin-1 included. */
    if (sandbox_file_read(dir, path, 0, AGENT_PROMPT_FILE_MAX, collect, &b, NULL) == 0 && b.len > 0)
        s = agent__utf8(b.data, b.len);
    buf_free(&b);
    (void)r;
    return s;
}

struct skills {
    struct buf *out;
    const char *dir;
    int n;
};

/* "name:" and "description:" of a SKILL.md's front matter (or its first heading/line). */
static void
skill_field(const char *md, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    const char *p = md;

    out[0] = '\0';
    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (n > kl && strncmp(p, key, kl) == 0 && p[kl] == ':') {
            const char *v = p + kl + 1;
            size_t vn = n - kl - 1;
            while (vn > 0 && (*v == ' ' || *v == '"' || *v == '\''))
                v++, vn--;
            while (vn > 0 &&
                   (v[vn - 1] == ' ' || v[vn - 1] == '"' || v[vn - 1] == '\'' || v[vn - 1] == '\r'))
                vn--;
            snprintf(out, outlen, "%.*s", (int)vn, v);
            return;
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
}

static int
skill_entry(const struct sandbox_file_entry *fe, void *arg)
{
    struct skills *s = arg;
    cleanup_free char *path = NULL;
    cleanup_free char *md = NULL;
    const char *base;
    char name[128], desc[512];

    if (fe->type != SANDBOX_FILE_DIR || s->n >= AGENT_SKILLS_MAX)
        return 0;
    path = xasprintf("%s/SKILL.md", fe->path);
    md = read_small(NULL, s->dir, path);
    if (md == NULL)
        return 0;
    base = strrchr(fe->path, '/');
    skill_field(md, "name", name, sizeof(name));
    skill_field(md, "description", desc, sizeof(desc));
    if (name[0] == '\0')
        snprintf(name, sizeof(name), "%s", base != NULL ? base + 1 : fe->path);
    buf_printf(s->out, NULL, "- %s: %s (read %s for how to use it)\n", name,
               desc[0] != '\0' ? desc : "no description", path);
    s->n++;
    return 0;
}

static const char preamble[] =
    "You are an autonomous agent working in a persistent Linux sandbox. Use the bash tool to "
    "run commands and the file_system tool to read and write files; your working directory "
    "is /workspace and files you leave there persist for later interactions. Work step by "
    "step, check the results of what you run, and finish with a short answer for the user.";

/*
 * The prompt's reads from the sandbox (AGENTS.md, the skills and their SKILL.md) take at
 * most this long in all: a process of the sandbox that stops and resumes the handler in
 * turn would otherwise hold the worker for as long as it likes, each of the handler's
 * keep-alives restarting the control socket's 10 s timeout. What
 * did not come in time is left out of the prompt, as a missing file is.
 */
#define AGENT_PROMPT_DEADLINE_MS (30 * 1000)

static char *
build_system(struct agent_run *r, const struct agent_plan *p, bool have_env)
{
    struct buf b;
    const char *si = json_string_value(p->system_instruction);
    char *s;

    buf_init(&b, 1u << 20);
    if (have_env)
        buf_printf(&b, NULL, "%s", preamble);
    if (si != NULL && si[0] != '\0')
        buf_printf(&b, NULL, "%s%s", b.len > 0 ? "\n\n" : "", si);
    if (have_env) {
        cleanup_free char *dir = NULL;
        if (env_dir(r, &dir, NULL) == 0) {
            cleanup_free char *agents = NULL;
            struct buf sk;
            struct skills st = { &sk, dir, 0 };
            sandbox_deadline_set(AGENT_PROMPT_DEADLINE_MS);
            agents = read_small(r, dir, "/workspace/AGENTS.md");
            if (agents != NULL)
                buf_printf(&b, NULL, "\n\n# Instructions from /workspace/AGENTS.md\n\n%s", agents);
            buf_init(&sk, 64u * 1024);
            sandbox_file_list(dir, "/.agent/skills", false, NULL, AGENT_SKILLS_MAX * 4, skill_entry,
                              &st, NULL);
            sandbox_deadline_set(0);
            if (sk.len > 0)
                buf_printf(&b, NULL,
                           "\n\n# Skills\n\nThese skills are installed; read a skill's "
                           "SKILL.md before you use it.\n\n%.*s",
                           (int)sk.len, sk.data);
            buf_free(&sk);
        }
    }
    /* Valid UTF-8 throughout, or the encoders' JSON strings fail: the skills' fields were cut
     * to a byte count, possibly inside a character. */
    s = b.len > 0 ? agent__utf8(b.data, b.len) : NULL;
    buf_free(&b);
    return s;
}

/* ------------------------------------------------------------------ input */

/* Text of a Content list (text items only; the create check refused the rest). */
static char *
content_text(json_t *content)
{
    struct buf b;
    size_t i;
    json_t *c;
    char *s;

    buf_init(&b, 64u << 20);
    json_array_foreach(content, i, c) {
        const char *t = json_string_value(json_object_get(c, "text"));
        if (t != NULL)
            buf_printf(&b, NULL, "%s%s", b.len > 0 ? "\n" : "", t);
    }
    s = b.len > 0 ? buf_steal(&b, NULL) : xstrdup("");
    buf_free(&b);
    return s;
}

/* The request's input as steps (user_input and function_result). Owned. */
static json_t *
input_steps(json_t *input)
{
    json_t *steps = json_array();

    if (json_is_string(input)) {
        json_array_append_new(steps, json_pack("{s:s, s:[{s:s, s:O}]}", "type", "user_input",
                                               "content", "type", "text", "text", input));
    } else if (json_is_object(input)) {
        json_array_append_new(steps,
                              json_pack("{s:s, s:[O]}", "type", "user_input", "content", input));
    } else if (json_is_array(input)) {
        size_t i;
        json_t *x, *content = json_array();
        json_array_foreach(input, i, x) {
            const char *t = json_string_value(json_object_get(x, "type"));
            if (t != NULL && (strcmp(t, "user_input") == 0 || strcmp(t, "function_result") == 0))
                json_array_append(steps, x);
            else
                json_array_append(content, x);
        }
        if (json_array_size(content) > 0)
            json_array_insert_new(
                steps, 0, json_pack("{s:s, s:O}", "type", "user_input", "content", content));
        json_decref(content);
    }
    return steps;
}

/* ------------------------------------------------------------------ usage */

struct totals {
    struct model_usage u;
    double cost;
    int64_t initial_input;
};

static json_t *
usage_json(const struct model_usage *u, double cost)
{
    json_t *j =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "total_input_tokens", (json_int_t)u->input,
                  "total_output_tokens", (json_int_t)u->output, "total_thought_tokens",
                  (json_int_t)u->thought, "total_cached_tokens", (json_int_t)u->cached,
                  "total_tool_use_tokens", (json_int_t)0, "total_tokens", (json_int_t)u->total);

    if (cost > 0)
        json_object_set_new(j, "total_cost_usd", json_real(cost));
    return j;
}

static void
add_usage(struct model_usage *t, const struct model_usage *u)
{
    t->input += u->input;
    t->output += u->output;
    t->thought += u->thought;
    t->cached += u->cached;
    t->total += u->total > 0 ? u->total : u->input + u->output + u->thought;
}

/* ------------------------------------------------------------------- loop */

struct loop {
    struct agent_run *r;
    struct agent_plan plan;
    json_t *history; /* neutral conversation */
    json_t *tools;   /* declarations the model sees */
    json_t *errors;
    struct totals tot;
    int64_t deadline;
    int64_t turns;
    int format_errors;
    bool cut;                              /* the last turn stopped at the output limit */
    int model_retries;                     /* failed model calls in a row */
    int64_t turn_end_ns, turn_end_tool_ns; /* when the last model call returned */
    int64_t between_ns, betweens;          /* the loop's own time between model calls */
    json_t *usage;   /* the last model turn's usage, for the step.stop of its first step */
    const char *end; /* final status */
    struct mcp_server *mcp[16];
    size_t nmcp;
};

static void add_error(struct loop *l, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
add_error(struct loop *l, const char *code, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    json_array_append_new(
        l->errors, json_pack("{s:s, s:s}", "code", code, "message", msg != NULL ? msg : code));
    log_warnx("interaction %s: %s", l->r->it.id, msg != NULL ? msg : code);
    free(msg);
}

static bool
tool_allowed(const struct loop *l, const char *name)
{
    size_t i;
    json_t *v;

    if (l->plan.allowed_tools == NULL)
        return true;
    json_array_foreach(l->plan.allowed_tools, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), name) == 0)
            return true;
    return false;
}

static bool
is_client_tool(const struct loop *l, const char *name)
{
    size_t i;
    json_t *t;

    json_array_foreach(l->plan.client_tools, i, t)
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return true;
    return false;
}

static struct mcp_server *
mcp_of(const struct loop *l, const char *tool)
{
    for (size_t i = 0; i < l->nmcp; i++)
        if (agent__mcp_has(l->mcp[i], tool))
            return l->mcp[i];
    return NULL;
}

/* The usage of the model turn, once: its first step's step.stop carries it. */
static json_t *
take_usage(struct loop *l)
{
    json_t *u = l->usage;

    l->usage = NULL;
    return u;
}

static void
add_tool_message(struct loop *l, const char *call_id, const char *name, const char *text,
                 bool is_error)
{
    cleanup_free char *clipped = agent__clip(text, strlen(text), AGENT_TOOL_VIEW_MAX);

    json_array_append_new(l->history,
                          json_pack("{s:s, s:s, s:s, s:s, s:b}", "role", "tool", "call_id", call_id,
                                    "name", name, "output", clipped, "is_error", is_error));
}

/* Calls of the last assistant message that have no result yet. */
json_t *
agent__pending_calls(json_t *history)
{
    json_t *pending = json_array();
    size_t n = json_array_size(history);
    ssize_t i;

    for (i = (ssize_t)n - 1; i >= 0; i--) {
        json_t *m = json_array_get(history, (size_t)i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role != NULL && strcmp(role, "assistant") == 0) {
            size_t k;
            json_t *c;
            json_array_foreach(json_object_get(m, "calls"), k, c) {
                bool answered = false;
                for (size_t j = (size_t)i + 1; j < n; j++) {
                    json_t *t = json_array_get(history, j);
                    if (json_equal(json_object_get(t, "call_id"), json_object_get(c, "id")))
                        answered = true;
                }
                if (!answered)
                    json_array_append(pending, c);
            }
            break;
        }
        if (role == NULL || strcmp(role, "tool") != 0)
            break;
    }
    return pending;
}

/* Unanswered calls get a result saying they never ran, so the history stays well formed. */
static void
close_pending(struct loop *l, const char *why)
{
    json_t *pending = agent__pending_calls(l->history);
    size_t i;
    json_t *c;

    json_array_foreach(pending, i, c)
        add_tool_message(l, json_string_value(json_object_get(c, "id")),
                         json_string_value(json_object_get(c, "name")), why, true);
    json_decref(pending);
}

static bool
check_budgets(struct loop *l)
{
    if (l->r->cancel) {
        l->end = "cancelled";
        return false;
    }
    if (l->r->next_step >= AGENT_STEPS_MAX) {
        add_error(l, "paddock/budget/steps", "%d steps recorded, the most one interaction keeps",
                  AGENT_STEPS_MAX);
        l->end = "budget_exceeded";
        return false;
    }
    if (util_now_ms() >= l->deadline) {
        add_error(l, "paddock/budget/timeout", "wall time budget of %lld s used up",
                  (long long)(l->plan.timeout_ms / 1000));
        l->end = "budget_exceeded";
        return false;
    }
    if (l->plan.max_tokens > 0 && l->tot.u.total >= l->plan.max_tokens) {
        add_error(l, "paddock/budget/tokens", "token budget of %lld used up (%lld tokens)",
                  (long long)l->plan.max_tokens, (long long)l->tot.u.total);
        l->end = "budget_exceeded";
        return false;
    }
    if (l->plan.max_cost_usd > 0 && l->tot.cost >= l->plan.max_cost_usd) {
        add_error(l, "paddock/budget/cost", "cost budget of $%.4f used up ($%.4f)",
                  l->plan.max_cost_usd, l->tot.cost);
        l->end = "budget_exceeded";
        return false;
    }
    return true;
}

static int
record_turn(struct loop *l, const struct model_turn *t, struct err **errp)
{
    struct agent_run *r = l->r;
    int64_t idx;

    if (t->thought != NULL || t->thought_signature != NULL) {
        json_t *step = json_pack("{s:s}", "type", "thought");
        json_t *final = json_pack("{s:s}", "type", "thought");
        if (step_begin(r, step, &idx, errp) < 0) {
            json_decref(step);
            json_decref(final);
            return -1;
        }
        json_decref(step);
        if (t->thought != NULL) {
            step_delta(r, idx,
                       json_pack("{s:s, s:{s:s, s:s}}", "type", "thought_summary", "content",
                                 "type", "text", "text", t->thought),
                       NULL);
            json_object_set_new(final, "summary",
                                json_pack("[{s:s, s:s}]", "type", "text", "text", t->thought));
        }
        if (t->thought_signature != NULL) {
            step_delta(r, idx,
                       json_pack("{s:s, s:s}", "type", "thought_signature", "signature",
                                 t->thought_signature),
                       NULL);
            json_object_set_new(final, "signature", json_string(t->thought_signature));
        }
        step_end(r, idx, final,
                 (t->text == NULL || t->text[0] == '\0') && t->ncalls == 0 ? take_usage(l) : NULL,
                 NULL);
        json_decref(final);
    }
    if (t->text != NULL && t->text[0] != '\0') {
        json_t *step = json_pack("{s:s, s:[]}", "type", "model_output", "content");
        json_t *final;
        if (step_begin(r, step, &idx, errp) < 0) {
            json_decref(step);
            return -1;
        }
        json_decref(step);
        step_delta(r, idx, json_pack("{s:s, s:s}", "type", "text", "text", t->text), NULL);
        final = json_pack("{s:s, s:[{s:s, s:s}]}", "type", "model_output", "content", "type",
                          "text", "text", t->text);
        step_end(r, idx, final, take_usage(l), NULL);
        json_decref(final);
    }
    return 0;
}

/* Runs the calls of one turn; client function calls pause the interaction afterwards. */
static int
run_calls(struct loop *l, const struct model_turn *t, struct err **errp)
{
    struct agent_run *r = l->r;
    bool any_client = false, bad_format = false;

    /* A turn cut at the output limit may have cut its last call's arguments short (Anthropic
     * sends what it had of them): none of its calls runs, and the model is told why. */
    l->cut = t->finish == MODEL_FINISH_LENGTH;
    for (size_t i = 0; i < t->ncalls; i++) {
        const struct model_call *c = &t->calls[i];
        struct tool_out out = { NULL, false };
        json_t *args = c->args != NULL ? json_incref(c->args) : json_object();
        bool known = strcmp(c->name, "bash") == 0 || strcmp(c->name, "file_system") == 0;
        bool builtin = known && r->it.env_id[0] != '\0';
        struct mcp_server *m = builtin ? NULL : mcp_of(l, c->name);

        /* Cancelled or out of wall time: no further call starts; the end closes them (the
         * loop's next budget check says why). */
        if (r->cancel || util_now_ms() >= l->deadline) {
            json_decref(args);
            break;
        }

        if (builtin && strcmp(c->name, "bash") == 0) {
            json_t *code = json_object_get(args, "command");
            if (step_whole(r,
                           json_pack("{s:s, s:s, s:{s:o, s:s}}", "type", "code_execution_call",
                                     "id", c->id, "arguments", "code",
                                     code != NULL ? json_incref(code) : json_string(""), "language",
                                     "bash"),
                           take_usage(l), errp) < 0) {
                json_decref(args);
                return -1;
            }
        } else if (m != NULL) {
            if (step_whole(r,
                           json_pack("{s:s, s:s, s:s, s:s, s:O}", "type", "mcp_server_tool_call",
                                     "id", c->id, "name", c->name, "server_name",
                                     agent__mcp_name(m), "arguments", args),
                           take_usage(l), errp) < 0) {
                json_decref(args);
                return -1;
            }
        } else {
            if (step_whole(r,
                           json_pack("{s:s, s:s, s:s, s:O}", "type", "function_call", "id", c->id,
                                     "name", c->name, "arguments", args),
                           take_usage(l), errp) < 0) {
                json_decref(args);
                return -1;
            }
        }
        if (l->cut) {
            bad_format = true;
            out.is_error = true;
            out.text = xasprintf("not run: your answer stopped at the output token limit, so "
                                 "the arguments of %s may be cut short; call it again with "
                                 "less in one call (write a long file in parts)",
                                 c->name);
        } else if (c->args == NULL) {
            bad_format = true;
            out.is_error = true;
            out.text = xasprintf("the arguments of %s were not a JSON object (%s); call the "
                                 "tool again with valid JSON arguments",
                                 c->name, c->args_error != NULL ? c->args_error : "invalid");
        } else if (!tool_allowed(l, c->name)) {
            out.is_error = true;
            out.text = xasprintf("the tool %s is not allowed in this interaction", c->name);
        } else if (builtin && strcmp(c->name, "bash") == 0) {
            if (!json_is_string(json_object_get(args, "command"))) {
                bad_format = true;
                out.is_error = true;
                out.text = xstrdup("bash needs a command (a string)");
            } else {
                run_bash(r, c->id, args, l->deadline, &out);
                add_tool_message(l, c->id, c->name, out.text, out.is_error);
                free(out.text);
                json_decref(args);
                if (r->cancel)
                    break;
                continue;
            }
        } else if (builtin) {
            run_files(r, args, l->deadline, &out);
        } else if (m != NULL) {
            struct err *me = NULL;
            int64_t t0;
            int mrc;
            agent__flush(r);
            t0 = util_mono_ns();
            mrc =
                agent__mcp_call(r->o, m, c->name, args, &r->cancel, &out.text, &out.is_error, &me);
            r->tool_ns += util_mono_ns() - t0;
            if (mrc < 0) {
                out.is_error = true;
                out.text = xstrdup(me->msg);
                err_free(me);
            }
            step_whole(r,
                       json_pack("{s:s, s:s, s:s, s:s, s:s, s:b}", "type", "mcp_server_tool_result",
                                 "call_id", c->id, "name", c->name, "server_name",
                                 agent__mcp_name(m), "result", out.text, "is_error", out.is_error),
                       NULL, NULL);
            add_tool_message(l, c->id, c->name, out.text, out.is_error);
            free(out.text);
            json_decref(args);
            continue;
        } else if (is_client_tool(l, c->name)) {
            any_client = true;
            json_decref(args);
            continue; /* the caller answers with a function_result */
        } else {
            bad_format = true;
            out.is_error = true;
            out.text = xasprintf("there is no tool named %s", c->name);
        }
        step_whole(r,
                   json_pack("{s:s, s:s, s:s, s:s, s:b}", "type", "function_result", "call_id",
                             c->id, "name", c->name, "result", out.text, "is_error", out.is_error),
                   NULL, NULL);
        add_tool_message(l, c->id, c->name, out.text, out.is_error);
        free(out.text);
        json_decref(args);
    }
    l->format_errors = bad_format ? l->format_errors + 1 : 0;
    if (any_client && !r->cancel) /* cancelled: the next budget check says so */
        l->end = "requires_action";
    return 0;
}

/*
 * Waits ms, or less once the server stops, the run is cancelled (when cancels counts) or its
 * deadline (wall clock; 0: none) comes. A cancel and a stop both wake agent_wait(); a run of
 * `paddock run` (no service) has neither, and sleeps.
 */
static void
pause_run(struct agent_run *r, int64_t deadline, int64_t ms, bool cancels)
{
    int64_t until = util_mono_ms() + ms;

    for (;;) {
        int64_t left = until - util_mono_ms();
        if (deadline != 0 && deadline - util_now_ms() < left)
            left = deadline - util_now_ms();
        if (left <= 0 || (cancels && r->cancel) || (r->svc != NULL && agent_stopping(r->svc)))
            return;
        if (r->svc != NULL) {
            agent_wait(r->svc, r->it.id, 0, (int)(left < 1000 ? left : 1000));
        } else {
            struct timespec ts = { (time_t)(left / 1000), (long)(left % 1000) * 1000000L };
            nanosleep(&ts, NULL);
        }
    }
}

/*
 * Records the conversation and usage so far with the interaction, before a turn's calls run
 * and before the next model call: a run that dies with its process (a crash, kill -9, a reboot)
 * leaves the turns it had, so the interaction that continues it sees the calls that already ran
 * instead of running them again, and its usage is not lost. The end writes them once more, whole.
 */
static void
save_progress(struct loop *l)
{
    struct agent_run *r = l->r;
    cleanup_free char *history = json_dumps(l->history, JSON_COMPACT);
    json_t *u = usage_json(&l->tot.u, l->tot.cost);
    cleanup_free char *usage = NULL;
    struct err *e = NULL;

    json_object_set_new(u, "initial_input_tokens", json_integer(l->tot.initial_input));
    usage = json_dumps(u, JSON_COMPACT);
    json_decref(u);
    /* In the run's batch of writes, which the flush before any tool runs or model call
     * commits: no commit of its own. */
    agent__tx(r);
    if (store_interaction_set_progress(r->st, r->it.id, history, usage, &e) < 0) {
        log_warnx("interaction %s: %s", r->it.id, e->msg);
        err_free(e);
    }
}

static void
loop_body(struct loop *l)
{
    struct agent_run *r = l->r;
    struct err *e = NULL;
    cleanup_free char *sys_prompt = NULL;
    bool have_env = r->it.env_id[0] != '\0';

    agent__flush(r);
    sys_prompt = build_system(r, &l->plan, have_env);
    for (;;) {
        struct model_turn t;
        struct model_request mr;
        int64_t t0;
        int rc;

        if (!check_budgets(l))
            return;
        if (l->turns > 0)
            save_progress(l); /* the last turn's results, before the next model call */
        if (l->turns >= l->plan.max_steps) {
            add_error(l, "paddock/budget/steps", "step budget of %lld model turns used up",
                      (long long)l->plan.max_steps);
            l->end = "budget_exceeded";
            return;
        }
        memset(&mr, 0, sizeof(mr));
        mr.model = &l->plan.model;
        mr.system_instruction = sys_prompt;
        mr.messages = l->history;
        mr.tools = l->tools;
        mr.generation = json_object_get(r->req, "generation_config");
        mr.cancel = &r->cancel;
        mr.deadline_ms = l->deadline;
        memset(&t, 0, sizeof(t));
        agent__flush(r);
        t0 = util_mono_ns();
        if (l->turn_end_ns != 0) {
            /* The loop's own work between two model calls: recording, tool dispatch, budgets;
             * the tools' run time is not the loop's. */
            l->between_ns += t0 - l->turn_end_ns - (r->tool_ns - l->turn_end_tool_ns);
            l->betweens++;
        }
        rc = model_generate(r->o->model, &mr, &t, &e);
        l->turn_end_ns = util_mono_ns();
        l->turn_end_tool_ns = r->tool_ns;
        r->model_ns += l->turn_end_ns - t0;
        l->turns++;
        if (rc < 0) {
            model_turn_clear(&t);
            if (r->cancel) {
                l->end = "cancelled";
            } else if (util_now_ms() >= l->deadline) {
                add_error(l, "paddock/budget/timeout",
                          "wall time budget of %lld s used up "
                          "waiting for the model (%s)",
                          (long long)(l->plan.timeout_ms / 1000), e->msg);
                l->end = "budget_exceeded";
            } else if ((e->code == ERR_UPSTREAM || e->code == ERR_TIMEOUT) &&
                       l->model_retries < AGENT_MODEL_RETRIES) {
                /* The client already retried what HTTP says is worth it; an answer that
                 * made no sense may still be a passing fault. Each try is a turn. */
                l->model_retries++;
                add_error(l, "paddock/model/retry", "model %s: %s (trying again, %d of %d)",
                          l->plan.model.spec, e->msg, l->model_retries, AGENT_MODEL_RETRIES);
                err_free(e);
                e = NULL;
                /* Not at once: the client's own retries are spent, so what failed had
                 * failed for a while (1 s, then 2 s). */
                pause_run(r, l->deadline, 1000LL << (l->model_retries - 1), true);
                continue;
            } else {
                add_error(l, "paddock/model", "model %s: %s", l->plan.model.spec, e->msg);
                l->end = "failed";
            }
            err_free(e);
            return;
        }
        l->model_retries = 0;
        if (t.ncalls > AGENT_CALLS_PER_TURN_MAX) {
            /* No model needs so many at once; recording and pairing them would hold the
             * worker for minutes. The turn's usage is counted, and the run ends. */
            add_usage(&l->tot.u, &t.usage);
            l->tot.cost += model_cost_usd(&l->plan.model, &t.usage);
            add_error(l, "paddock/model/calls",
                      "the model made %zu tool calls in one turn, more than the %d a turn "
                      "may make",
                      t.ncalls, AGENT_CALLS_PER_TURN_MAX);
            l->end = "failed";
            model_turn_clear(&t);
            return;
        }
        add_usage(&l->tot.u, &t.usage);
        json_decref(l->usage);
        l->usage = usage_json(&t.usage, model_cost_usd(&l->plan.model, &t.usage));
        if (l->turns == 1)
            l->tot.initial_input = t.usage.input;
        l->tot.cost += model_cost_usd(&l->plan.model, &t.usage);
        if (record_turn(l, &t, &e) < 0) {
            model_turn_clear(&t);
            goto store_failed;
        }
        json_array_append(l->history, t.message);
        if (t.ncalls == 0 && t.finish == MODEL_FINISH_MALFORMED) {
            /* A call the upstream could not read (Gemini's MALFORMED_FUNCTION_CALL): a format
             * error like arguments that do not parse, not an answer. The model is told, and
             * tries again within the format errors' limit. */
            if (++l->format_errors >= AGENT_FORMAT_ERRORS_MAX) {
                add_error(l, "paddock/model/format", "%d malformed tool calls in a row (%s)",
                          l->format_errors, t.finish_reason != NULL ? t.finish_reason : "?");
                l->end = "failed";
                model_turn_clear(&t);
                return;
            }
            json_array_append_new(
                l->history,
                json_pack("{s:s, s:s++}", "role", "user", "text",
                          "Your last tool call could not be read (",
                          t.finish_reason != NULL ? t.finish_reason : "malformed",
                          "); call the tool again with valid JSON arguments, using only the "
                          "tools you were given."));
            model_turn_clear(&t);
            continue;
        }
        if (t.ncalls == 0 && r->cancel) {
            /* Cancelled while the answer came: it stays unanswered, as cancelled. */
            l->end = "cancelled";
            model_turn_clear(&t);
            return;
        }
        if (t.ncalls == 0) {
            l->end = t.finish == MODEL_FINISH_LENGTH ? "incomplete" : "completed";
            if (t.finish == MODEL_FINISH_LENGTH)
                add_error(l, "paddock/model/length", "the model stopped at its output limit");
            else if (t.finish == MODEL_FINISH_OTHER)
                add_error(l, "paddock/model/finish", "the model stopped: %s",
                          t.finish_reason != NULL ? t.finish_reason : "unknown reason");
            model_turn_clear(&t);
            return;
        }
        if (!check_budgets(l)) {
            model_turn_clear(&t);
            return;
        }
        save_progress(l); /* the turn's calls, before any runs */
        rc = run_calls(l, &t, &e);
        model_turn_clear(&t);
        if (rc < 0)
            goto store_failed;
        if (l->end != NULL)
            return;
        if (l->format_errors >= AGENT_FORMAT_ERRORS_MAX && l->cut) {
            add_error(l, "paddock/model/length",
                      "the model stopped at its output limit in the middle of its tool calls, "
                      "%d turns in a row",
                      l->format_errors);
            l->end = "incomplete";
            return;
        }
        if (l->format_errors >= AGENT_FORMAT_ERRORS_MAX) {
            add_error(l, "paddock/model/format", "%d malformed tool calls in a row",
                      l->format_errors);
            l->end = "failed";
            return;
        }
    }
store_failed:
    if (e != NULL && e->code == ERR_LIMIT) { /* step_begin: the steps' cap, mid-turn */
        add_error(l, "paddock/budget/steps", "%s", e->msg);
        l->end = "budget_exceeded";
    } else {
        add_error(l, "paddock/internal", "recording the interaction failed: %s",
                  e != NULL ? e->msg : "error");
        l->end = "failed";
    }
    err_free(e);
}

/* Appends one interaction's input (its steps) to the conversation. */
static void
append_input(struct loop *l, json_t *steps)
{
    size_t i;
    json_t *s;

    {
        /* Calls the caller went on from without answering get a result that says so. */
        bool answers = false;
        json_array_foreach(steps, i, s)
            if (strcmp(json_string_value(json_object_get(s, "type")), "function_result") == 0)
                answers = true;
        if (!answers)
            close_pending(l, "no result: the caller went on without answering this call");
    }
    /* Results first, then text, whatever order the input gave them in: every format wants a
     * call's result right after the call (OpenAI and Gemini refuse a user turn between them,
     * Anthropic a text block ahead of the tool_result blocks). */
    for (int pass = 0; pass < 2; pass++)
        json_array_foreach(steps, i, s) {
            const char *type = json_string_value(json_object_get(s, "type"));
            if ((strcmp(type, "user_input") == 0) != (pass == 1))
                continue;
            if (pass == 1) {
                cleanup_free char *text = content_text(json_object_get(s, "content"));
                json_array_append_new(l->history,
                                      json_pack("{s:s, s:s}", "role", "user", "text", text));
            } else {
                json_t *res = json_object_get(s, "result");
                cleanup_free char *text = json_is_string(res)  ? xstrdup(json_string_value(res))
                                          : json_is_array(res) ? content_text(res)
                                                               : json_dumps(res, JSON_COMPACT);
                const char *name = json_string_value(json_object_get(s, "name"));
                const char *cid = json_string_value(json_object_get(s, "call_id"));
                json_t *pending = agent__pending_calls(l->history);
                size_t k;
                json_t *c;
                /* The name is optional on the wire; the pending call knows it. */
                json_array_foreach(pending, k, c)
                    if (name == NULL &&
                        strcmp(json_string_value(json_object_get(c, "id")), cid) == 0)
                        name = json_string_value(json_object_get(c, "name"));
                add_tool_message(l, cid, name != NULL ? name : "function", text != NULL ? text : "",
                                 json_is_true(json_object_get(s, "is_error")));
                json_decref(pending);
            }
        }
}

/* Whether a stored history holds a conversation: one that ended before its run got to it
 * stored none ("[]" from builds before the conversation was loaded first). */
static json_t *
stored_history(const char *text)
{
    json_t *h = text != NULL ? json_loads(text, 0, NULL) : NULL;

    if (json_is_array(h) && json_array_size(h) > 0)
        return h;
    json_decref(h);
    return NULL;
}

/*
 * The conversation so far: the previous interaction's, then this input. A previous
 * interaction that ended before its run stored a conversation (cancelled while queued, failed
 * by a restart, or by its plan before this was loaded first) stands for the conversation
 * before it and its own input, so a chain goes on whole through it.
 */
static int
load_history(struct loop *l, json_t *steps, struct err **errp)
{
    struct agent_run *r = l->r;
    json_t *inputs =
        json_array(); /* the inputs of previous ones without a conversation, newest first */
    char id[sizeof(r->it.previous_id)];
    int depth = 0;
    size_t i;

    snprintf(id, sizeof(id), "%s", r->it.previous_id);
    while (id[0] != '\0') {
        struct store_interaction prev = { 0 };
        json_t *h, *req;
        if (++depth > AGENT_CHAIN_MAX) {
            json_decref(inputs);
            return err_set(errp, ERR_INVALID, 0,
                           "previous_interaction_id: more than %d interactions in a row ended "
                           "without a conversation",
                           AGENT_CHAIN_MAX);
        }
        if (store_interaction_get(r->st, id, &prev, errp) < 0) {
            if (depth > 1 && (*errp)->code == ERR_NOT_FOUND) {
                /* An earlier one, deleted or past retention since: the chain starts after it. */
                err_free(*errp);
                *errp = NULL;
                break;
            }
            json_decref(inputs);
            return err_wrap(errp, "previous_interaction_id");
        }
        if ((h = stored_history(prev.history)) != NULL) {
            json_decref(l->history);
            l->history = h;
            /* A run that died with its process left its conversation as of its last turn:
             * the calls of that turn have no result recorded. (One that asks for the
             * caller's results is answered by this input instead.) */
            if (strcmp(prev.status, "requires_action") != 0)
                close_pending(l, "no result: the server stopped while this call ran; it may "
                                 "have run in part or in full");
            store_interaction_clear(&prev);
            break;
        }
        req = json_loads(prev.request != NULL ? prev.request : "{}", 0, NULL);
        json_array_append_new(inputs, input_steps(json_object_get(req, "input")));
        json_decref(req);
        snprintf(id, sizeof(id), "%s", prev.previous_id);
        store_interaction_clear(&prev);
    }
    for (i = json_array_size(inputs); i > 0; i--)
        append_input(l, json_array_get(inputs, i - 1));
    json_decref(inputs);
    append_input(l, steps);
    return 0;
}

/* Ends the run failed with e (freed) as its error: "paddock/invalid" when the request named
 * something wrong or missing, else code. */
static void
fail_with(struct loop *l, const char *code, const char *prefix, struct err *e)
{
    add_error(l, e->code == ERR_INVALID || e->code == ERR_NOT_FOUND ? "paddock/invalid" : code,
              "%s%s", prefix, e->msg);
    err_free(e);
    l->end = "failed";
}

/*
 * The final write, tried again while the database stays busy or full for a while: an
 * interaction left in_progress by a failed write looks alive to every client (and to a cancel)
 * until the server restarts. Up to AGENT_FINISH_TRIES tries, 1, 2, 4... s apart (each may
 * itself wait the database's busy timeout), fewer when the server stops.
 */
static void
finish_run(struct agent_run *r)
{
    struct err *e = NULL;

    for (int i = 0;; i++) {
        bool last = i + 1 >= AGENT_FINISH_TRIES || (r->svc != NULL && agent_stopping(r->svc));
        if (agent__finish(r, last, &e) == 0) {
            if (i > 0)
                log_info("interaction %s: its end (%s) recorded at try %d", r->it.id, r->it.status,
                         i + 1);
            return;
        }
        log_warnx("interaction %s: recording its end (%s): %s%s", r->it.id, r->it.status, e->msg,
                  last ? "; it stays in_progress until the server restarts" : "; trying again");
        err_free(e);
        e = NULL;
        if (last)
            return;
        pause_run(r, 0, 1000LL << i, false);
    }
}

void
agent__run(struct agent_run *r)
{
    struct loop l;
    struct err *e = NULL;
    json_t *steps;
    size_t i;
    json_t *s;

    int64_t t_start = util_mono_ns();

    memset(&l, 0, sizeof(l));
    l.r = r;
    /* Who runs it: a restarting server leaves alone what a live process (paddock run) runs. */
    snprintf(r->it.runner, sizeof(r->it.runner), "%d:%llu", (int)getpid(),
             (unsigned long long)util_proc_start_time(getpid()));
    l.history = json_array();
    l.errors = json_array();
    l.tools = json_array();
    if (set_status(r, "in_progress", &e) < 0) {
        log_warnx("interaction %s: %s", r->it.id, e->msg);
        err_free(e);
        e = NULL;
    }
    /* The input and the conversation first: whatever ends this run, both are kept, and a
     * later interaction goes on from them. */
    steps = input_steps(json_object_get(r->req, "input"));
    json_array_foreach(steps, i, s) {
        if (step_whole(r, json_incref(s), NULL, &e) < 0)
            break;
    }
    if (e == NULL)
        load_history(&l, steps, &e);
    json_decref(steps);
    if (e != NULL) {
        fail_with(&l, "paddock/internal", "", e);
        goto finish;
    }
    if (agent__plan(r->st, r->it.project, r->o->default_model, r->req, &l.plan, &e) < 0) {
        add_error(&l, "paddock/config", "%s", e->msg);
        err_free(e);
        l.end = "failed";
        goto finish;
    }
    l.deadline = r->it.created_ms + l.plan.timeout_ms;
    if (l.deadline < util_now_ms() + 1000)
        l.deadline = util_now_ms() + l.plan.timeout_ms; /* queued for long: count from now */
    agent__flush(r);
    if (r->it.env_id[0] == '\0' && (l.plan.wants_env || l.plan.env_spec != NULL)) {
        char id[40] = "";
        if (r->o->resolve_env(r->o->resolve_arg, r->ctx, r->it.project, l.plan.env_spec, false, id,
                              &e) < 0) {
            fail_with(&l, "paddock/environment", "environment: ", e);
            goto finish;
        }
        snprintf(r->it.env_id, sizeof(r->it.env_id), "%s", id);
        store_interaction_update(r->st, &r->it, NULL);
    }
    if (r->it.env_id[0] != '\0') {
        json_t *b = builtin_tools();
        size_t k;
        json_t *t;
        json_array_foreach(b, k, t)
            if (tool_allowed(&l, json_string_value(json_object_get(t, "name"))))
                json_array_append(l.tools, t);
        json_decref(b);
    }
    json_array_extend(l.tools, l.plan.client_tools);
    {
        size_t k;
        json_t *cfg;
        json_array_foreach(l.plan.mcp, k, cfg) {
            if (l.nmcp == sizeof(l.mcp) / sizeof(l.mcp[0])) {
                add_error(&l, "paddock/mcp", "more than %zu mcp_server tools", l.nmcp);
                l.end = "failed";
                goto finish;
            }
            agent__flush(r);
            if (r->cancel) {
                l.end = "cancelled";
                goto finish;
            }
            if (agent__mcp_open(r->o, cfg, &r->cancel, &l.mcp[l.nmcp], &e) < 0) {
                if (r->cancel) {
                    l.end = "cancelled";
                } else {
                    add_error(&l, "paddock/mcp", "%s", e->msg);
                    l.end = "failed";
                }
                err_free(e);
                goto finish;
            }
            agent__mcp_declare(l.mcp[l.nmcp], l.tools);
            l.nmcp++;
        }
    }
    loop_body(&l);
finish:
    if (l.end == NULL)
        l.end = "failed";
    if (strcmp(l.end, "cancelled") == 0 && r->svc != NULL && agent_stopping(r->svc)) {
        add_error(&l, "paddock/interrupted",
                  "the server stopped while this interaction ran; its steps so far are kept");
        l.end = "failed";
    }
    if (strcmp(l.end, "requires_action") != 0)
        close_pending(&l, "not run: the interaction ended before this call");
    {
        json_t *u = usage_json(&l.tot.u, l.tot.cost);
        json_object_set_new(u, "initial_input_tokens", json_integer(l.tot.initial_input));
        free(r->it.usage);
        r->it.usage = json_dumps(u, JSON_COMPACT);
        json_decref(u);
        free(r->it.history);
        r->it.history = json_dumps(l.history, JSON_COMPACT);
        free(r->it.errors);
        r->it.errors = json_array_size(l.errors) > 0 ? json_dumps(l.errors, JSON_COMPACT) : NULL;
        snprintf(r->it.status, sizeof(r->it.status), "%s", l.end);
        r->it.updated_ms = util_now_ms();
        finish_run(r);
    }
    {
        /* What the loop costs (bench/agent_bench.py reads these): per model turn, its wall time
         * less the tools' own run time (prompt building, environment lookup and model calls
         * included); per step, its own work between two model calls. */
        char turns[24], over[32], model[32], step[32];
        int64_t wall = util_mono_ns() - t_start;
        snprintf(turns, sizeof(turns), "%lld", (long long)l.turns);
        snprintf(over, sizeof(over), "%.1f",
                 l.turns > 0 ? (double)(wall - r->tool_ns) / 1000.0 / (double)l.turns : 0.0);
        snprintf(model, sizeof(model), "%.1f",
                 l.turns > 0 ? (double)r->model_ns / 1000.0 / (double)l.turns : 0.0);
        snprintf(step, sizeof(step), "%.1f",
                 l.betweens > 0 ? (double)l.between_ns / 1000.0 / (double)l.betweens : 0.0);
        const char *kv[] = { "id",
                             r->it.id,
                             "status",
                             l.end,
                             "environment_id",
                             r->it.env_id,
                             "turns",
                             turns,
                             "loop_us_per_turn",
                             over,
                             "model_us_per_turn",
                             model,
                             "loop_us_per_step",
                             step };
        log_fields(LOG_LEVEL_INFO, "interaction ended", kv, 14);
    }
    for (size_t k = 0; k < l.nmcp; k++)
        agent__mcp_free(l.mcp[k]);
    agent__plan_free(&l.plan);
    json_decref(l.usage);
    json_decref(l.history);
    json_decref(l.errors);
    json_decref(l.tools);
}
