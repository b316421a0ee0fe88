/*
 * Errors with a context chain, after crun's libcrun_error_t: set once where a failure starts,
 * wrapped with context on the way up, reported once at the boundary.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char *const code_names[] = {
    [ERR_INVALID] = "invalid",     [ERR_NOT_FOUND] = "not_found", [ERR_CONFLICT] = "conflict",
    [ERR_PERM] = "permission",     [ERR_LIMIT] = "limit",         [ERR_IO] = "io",
    [ERR_UPSTREAM] = "upstream",   [ERR_TIMEOUT] = "timeout",     [ERR_INTERNAL] = "internal",
};

const char *
err_code_name(enum err_code code)
{
    if ((size_t)code < sizeof(code_names) / sizeof(code_names[0]) && code_names[code] != NULL)
        return code_names[code];
    return "internal";
}

enum err_code
err_code_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof(code_names) / sizeof(code_names[0]); i++)
        if (code_names[i] != NULL && strcmp(code_names[i], name) == 0)
            return (enum err_code)i;
    return ERR_INTERNAL;
}

int
err_set(struct err **errp, enum err_code code, int errnum, const char *fmt, ...)
{
    va_list ap;
    char *base = NULL;
    struct err *e;

    if (errp == NULL)
        return -1;
    ASSERT(*errp == NULL);
    va_start(ap, fmt);
    if (vasprintf(&base, fmt, ap) < 0)
        common_assert_fail("vasprintf", __FILE__, __LINE__);
    va_end(ap);
    e = xcalloc(1, sizeof(*e));
    e->code = code;
    e->errnum = errnum;
    if (errnum != 0) {
        e->msg = xasprintf("%s: %s", base, strerror(errnum));
        free(base);
    } else {
        e->msg = base;
    }
    *errp = e;
    return -1;
}

int
err_field(struct err **errp, const char *field, const char *fmt, ...)
{
    va_list ap;
    char *msg = NULL;

    if (errp == NULL)
        return -1;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        common_assert_fail("vasprintf", __FILE__, __LINE__);
    va_end(ap);
    err_set(errp, ERR_INVALID, 0, "%s: %s", field, msg);
    free(msg);
    return -1;
}

int
err_wrap(struct err **errp, const char *fmt, ...)
{
    va_list ap;
    char *ctx = NULL;
    char *msg;

    if (errp == NULL || *errp == NULL)
        return -1;
    va_start(ap, fmt);
    if (vasprintf(&ctx, fmt, ap) < 0)
        common_assert_fail("vasprintf", __FILE__, __LINE__);
    va_end(ap);
    msg = xasprintf("%s: %s", ctx, (*errp)->msg);
    free(ctx);
    free((*errp)->msg);
    (*errp)->msg = msg;
    return -1;
}

void
err_free(struct err *e)
{
    if (e == NULL)
        return;
    free(e->msg);
    free(e);
}
