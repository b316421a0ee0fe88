/*
 * One logging module (after OpenBSD's log.c): text lines to stderr in the foreground, JSON lines
 * with --log-format=json. Untrusted text is escaped by callers with log_escape().
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

enum log_level common_log_level = LOG_LEVEL_WARN;
static enum log_format log_format_cur = LOG_FORMAT_TEXT;
static const char *log_prog = "paddock";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void
log_init(const char *progname, enum log_level level, enum log_format format)
{
    if (progname != NULL)
        log_prog = progname;
    common_log_level = level;
    log_format_cur = format;
}

/* Escapes for a text line, or (json) for the inside of a JSON string. */
static char *
escape_impl(const void *data, size_t len, size_t max, bool json)
{
    const unsigned char *p = data;
    size_t n = len < max ? len : max;
    char *out = xmalloc(n * 6 + 4);
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else if (c == '\t') {
            out[o++] = '\\';
            out[o++] = 't';
        } else if (c == '\\') {
            out[o++] = '\\';
            out[o++] = '\\';
        } else if (c == '"') {
            out[o++] = '\\';
            out[o++] = '"';
        } else if ((c < 0x20 || c >= 0x7f) && json) {
            snprintf(out + o, 7, "\\u%04x", c);
            o += 6;
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(out + o, 5, "\\x%02x", c);
            o += 4;
        } else {
            out[o++] = (char)c;
        }
    }
    if (n < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

char *
log_escape(const void *data, size_t len, size_t max)
{
    return escape_impl(data, len, max, false);
}

/* What a redacted secret becomes; a secret shorter than REDACT_MIN is not looked for. */
#define REDACTED   "[redacted]"
#define REDACT_MIN 4

char *
log_escape_redact(const void *data, size_t len, size_t max, const char *const *secrets)
{
    const char *s = data;
    size_t n = 0, i = 0;
    cleanup_free char *r = NULL;

    if (secrets == NULL)
        return log_escape(data, len, max);
    /* Redacted first, cut after: a secret across the cut would otherwise leave its start.
     * Keeping one byte past max is enough for the escape to cut there and say so. */
    r = xmalloc(max + sizeof(REDACTED));
    while (i < len && n <= max) {
        size_t k, klen = 0;
        for (k = 0; secrets[k] != NULL; k++) {
            klen = strlen(secrets[k]);
            if (klen >= REDACT_MIN && len - i >= klen && memcmp(s + i, secrets[k], klen) == 0)
                break;
        }
        if (secrets[k] != NULL) {
            memcpy(r + n, REDACTED, sizeof(REDACTED) - 1);
            n += sizeof(REDACTED) - 1;
            i += klen;
        } else {
            r[n++] = s[i++];
        }
    }
    return log_escape(r, n, max);
}

static void vlog(enum log_level level, int errnum, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

void
common_log(enum log_level level, int errnum, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(level, errnum, fmt, ap);
    va_end(ap);
}

void
log_always(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vlog(LOG_LEVEL_INFO, 0, fmt, ap);
    va_end(ap);
}

static void
vlog(enum log_level level, int errnum, const char *fmt, va_list ap)
{
    char *msg = NULL;
    int saved = errno;

    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    if (msg == NULL)
        return;
    if (log_format_cur == LOG_FORMAT_JSON) {
        char ts[40];
        cleanup_free char *esc = escape_impl(msg, strlen(msg), 65536, true);
        util_format_time(util_now_ms(), ts, sizeof(ts));
        if (errnum != 0)
            fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"%s: %s\"}\n", ts,
                    level_names[level], esc, strerror(errnum));
        else
            fprintf(stderr, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", ts,
                    level_names[level], esc);
    } else {
        /* One event, one line: a message that carries a line break or a terminal escape (text
         * from a model, an upstream or a sandbox, quoted somewhere in it) is escaped whole,
         * so that it can neither forge a line nor drive the terminal. */
        cleanup_free char *esc = NULL;
        for (const unsigned char *p = (const unsigned char *)msg; *p != '\0'; p++)
            if (*p < 0x20 || *p == 0x7f) {
                esc = escape_impl(msg, strlen(msg), 65536, false);
                break;
            }
        if (errnum != 0)
            fprintf(stderr, "%s: %s: %s\n", log_prog, esc != NULL ? esc : msg, strerror(errnum));
        else
            fprintf(stderr, "%s: %s\n", log_prog, esc != NULL ? esc : msg);
    }
    free(msg);
    errno = saved;
}

void
log_err(const struct err *e)
{
    common_log(LOG_LEVEL_ERROR, 0, "%s", e->msg);
}

void
log_fields(enum log_level level, const char *msg, const char *const *kv, size_t n_kv)
{
    struct buf b;
    char ts[40];
    bool json = log_format_cur == LOG_FORMAT_JSON;

    if (common_log_level < level)
        return;
    /* Values are escaped from at most 1 KiB each; a line of any sane number of fields fits. */
    buf_init(&b, 1024 * 1024);
    if (json) {
        cleanup_free char *m = escape_impl(msg, strlen(msg), 4096, true);
        util_format_time(util_now_ms(), ts, sizeof(ts));
        buf_printf(&b, NULL, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"", ts,
                   level_names[level], m);
    } else {
        buf_printf(&b, NULL, "%s: %s", log_prog, msg);
    }
    for (size_t i = 0; i + 1 < n_kv && i < 128; i += 2) {
        const char *v = kv[i + 1] != NULL ? kv[i + 1] : "";
        cleanup_free char *ev = escape_impl(v, strlen(v), 1024, json);
        if (json)
            buf_printf(&b, NULL, ",\"%s\":\"%s\"", kv[i], ev);
        else if (ev[0] == '\0' || strpbrk(ev, " =") != NULL)
            buf_printf(&b, NULL, " %s=\"%s\"", kv[i], ev);
        else
            buf_printf(&b, NULL, " %s=%s", kv[i], ev);
    }
    buf_printf(&b, NULL, json ? "}\n" : "\n");
    if (b.data != NULL)
        fwrite(b.data, 1, b.len, stderr);
    buf_free(&b);
}
