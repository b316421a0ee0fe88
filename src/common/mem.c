/* Allocation that never returns NULL, and the cleanup-attribute helpers. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

void
common_assert_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "paddock: assertion failed: %s at %s:%d\n", what, file, line);
    abort();
}

static void *
oom_check(void *p)
{
    if (p == NULL)
        common_assert_fail("out of memory", __FILE__, __LINE__);
    return p;
}

void *
xmalloc(size_t n)
{
    return oom_check(malloc(n == 0 ? 1 : n));
}

void *
xcalloc(size_t nmemb, size_t n)
{
    return oom_check(calloc(nmemb == 0 ? 1 : nmemb, n == 0 ? 1 : n));
}

void *
xrealloc(void *p, size_t n)
{
    return oom_check(realloc(p, n == 0 ? 1 : n));
}

char *
xstrdup(const char *s)
{
    return oom_check(strdup(s));
}

char *
xstrndup(const char *s, size_t n)
{
    return oom_check(strndup(s, n));
}

char *
xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return oom_check(s);
}

char *
xasprintf_secret(const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap); /* measures: writes nothing, allocates nothing */
    va_end(ap);
    if (n < 0)
        common_assert_fail("vsnprintf", __FILE__, __LINE__);
    s = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    if (vsnprintf(s, (size_t)n + 1, fmt, ap) != n)
        common_assert_fail("vsnprintf", __FILE__, __LINE__);
    va_end(ap);
    return s;
}

char *
pct_encode_secret(const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out, *o;

    if (len > (SIZE_MAX - 1) / 3)
        common_assert_fail("pct_encode_secret: too long", __FILE__, __LINE__);
    out = o = xmalloc(3 * len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}

void
free_wiped(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void
common_cleanup_free(void *p)
{
    free(*(void **)p);
}

void
close_and_reset(int *fdp)
{
    int saved = errno;

    if (*fdp >= 0)
        close(*fdp);
    *fdp = -1;
    errno = saved;
}

void
common_cleanup_close(int *fd)
{
    close_and_reset(fd);
}

void
common_cleanup_fclose(FILE **f)
{
    if (*f != NULL)
        fclose(*f);
}

void
common_cleanup_dir(DIR **d)
{
    if (*d != NULL)
        closedir(*d);
}

void
common_cleanup_err(struct err **e)
{
    err_free(*e);
}

void
buf_init(struct buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
    b->wipe = false;
}

/* The block p of cap bytes moved to one of n bytes; a wiping buffer leaves no copy behind. */
static char *
buf_grow(const struct buf *b, size_t n)
{
    char *p;

    if (!b->wipe || b->data == NULL)
        return xrealloc(b->data, n);
    p = xmalloc(n);
    memcpy(p, b->data, b->len);
    explicit_bzero(b->data, b->cap);
    free(b->data);
    return p;
}

int
buf_append(struct buf *b, const void *data, size_t len, struct err **errp)
{
    size_t need;

    if (len > b->max || b->len > b->max - len) {
        size_t max = b->max;
        buf_free(b);
        return err_set(errp, ERR_LIMIT, 0, "more than %zu bytes", max);
    }
    need = b->len + len + 1;
    if (need > b->cap) {
        size_t cap = b->cap < 64 ? 64 : b->cap;
        while (cap < need && cap <= SIZE_MAX / 2)
            cap *= 2;
        if (b->max < SIZE_MAX && cap > b->max + 1)
            cap = b->max + 1;
        if (cap < need)
            cap = need;
        b->data = buf_grow(b, cap);
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int
buf_printf(struct buf *b, struct err **errp, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    int n, r;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        common_assert_fail("vasprintf", __FILE__, __LINE__);
    r = buf_append(b, s, (size_t)n, errp);
    free(s);
    return r;
}

void
buf_free(struct buf *b)
{
    if (b->wipe && b->data != NULL)
        explicit_bzero(b->data, b->cap);
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

char *
buf_steal(struct buf *b, size_t *len_out)
{
    char *d;

    if (b->data == NULL)
        buf_append(b, "", 0, NULL);
    d = b->data;
    if (len_out != NULL)
        *len_out = b->len;
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return d;
}
