/*
 * common — the bottom layer every other module stands on: errors with a context chain,
 * logging, capped buffers, cleanup attributes, ids, sizes and small fd helpers.
 * It depends on nothing but libc.
 */
#ifndef PADDOCK_COMMON_H
#define PADDOCK_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

/* ---------------------------------------------------------------- errors */

/** The closed set of error classes; only api/ maps them to HTTP statuses. */
enum err_code {
    ERR_INVALID = 1, /* bad input from a caller */
    ERR_NOT_FOUND,
    ERR_CONFLICT, /* the object is in the wrong state for this */
    ERR_PERM,
    ERR_LIMIT, /* a cap was hit */
    ERR_IO,
    ERR_UPSTREAM,
    ERR_TIMEOUT,
    ERR_INTERNAL,
};

/** An error: its class, the errno seen where it started (0 if none) and a message chain. */
struct err {
    enum err_code code;
    int errnum;
    char *msg; /* owned; "outer context: inner context: cause[: strerror]" */
};

/**
 * Sets *errp to a new error. The message is formatted from fmt; when errnum is not 0,
 * ": strerror(errnum)" is appended. errp may be NULL (the error is dropped).
 * Always returns -1 so failure sites read `return err_set(...)`.
 */
int err_set(struct err **errp, enum err_code code, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/** ERR_INVALID "field: message": bad input, naming what was wrong. Returns -1. */
int err_field(struct err **errp, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Prefixes "context: " to the message of *errp. Returns -1. A no-op when *errp is unset. */
int err_wrap(struct err **errp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Frees an error; accepts NULL. */
void err_free(struct err *e);

/** Returns the stable lower-case name of a code ("invalid", "not_found", ...). Borrowed. */
const char *err_code_name(enum err_code code);

/** Parses a name produced by err_code_name(); ERR_INTERNAL when unknown. */
enum err_code err_code_from_name(const char *name);

/* ---------------------------------------------------------------- memory */

/* Out-of-memory is not an error value (STYLE R-18): these log and abort. */
void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/** Returns a newly allocated formatted string (owned). */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/**
 * Like xasprintf(), for a string that holds a secret: measured first, then formatted once into
 * an allocation of exactly its size, so no grown-and-freed intermediate buffer (vasprintf's)
 * leaves a copy behind. The caller wipes it (free_wiped()). Owned.
 */
char *xasprintf_secret(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/**
 * s (len bytes) percent-encoded for a URL query or form (RFC 3986: all but ALPHA DIGIT "-._~"
 * as %XX), in one allocation of 3 * len + 1 bytes made up front: it never grows, so it leaves
 * no copy of a secret behind. The caller wipes it (free_wiped()). Owned.
 */
char *pct_encode_secret(const char *s, size_t len);
/** Wipes the string s (up to its NUL) and frees it; NULL is fine. */
void free_wiped(char *s);

/** Logs file:line and aborts when cond is false. For invariants, never input validation. */
#define ASSERT(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            common_assert_fail(#cond, __FILE__, __LINE__);                                         \
    } while (0)
void common_assert_fail(const char *what, const char *file, int line) __attribute__((noreturn));

/* --------------------------------------------------------------- cleanup */

void common_cleanup_free(void *p);
void common_cleanup_close(int *fd);
void common_cleanup_fclose(FILE **f);
void common_cleanup_dir(DIR **d);
void common_cleanup_err(struct err **e);

#define cleanup_free   __attribute__((cleanup(common_cleanup_free)))
#define cleanup_close  __attribute__((cleanup(common_cleanup_close)))
#define cleanup_fclose __attribute__((cleanup(common_cleanup_fclose)))
#define cleanup_dir    __attribute__((cleanup(common_cleanup_dir)))
#define cleanup_err    __attribute__((cleanup(common_cleanup_err)))

/** Returns *pp and sets *pp to NULL: hands ownership out of a cleanup variable. */
#define steal_ptr(pp)                                                                               \
    ({                                                                                             \
        __typeof__(*(pp)) steal_tmp_ = *(pp);                                                      \
        *(pp) = NULL;                                                                              \
        steal_tmp_;                                                                                \
    })

/** Returns *fdp and sets *fdp to -1. */
static inline int
steal_fd(int *fdp)
{
    int fd = *fdp;
    *fdp = -1;
    return fd;
}

/** Closes *fdp if it is not -1 and sets it to -1, keeping errno. */
void close_and_reset(int *fdp);

/* ----------------------------------------------------------------- log */

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
};

enum log_format {
    LOG_FORMAT_TEXT = 0,
    LOG_FORMAT_JSON,
};

/** Sets the level and format; the program name prefixes text lines. Not thread-safe. */
void log_init(const char *progname, enum log_level level, enum log_format format);
extern enum log_level common_log_level;

void common_log(enum log_level level, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The level is checked before the arguments are evaluated (STYLE R-33). */
#define log_warn(...)                                                                               \
    do {                                                                                           \
        if (common_log_level >= LOG_LEVEL_WARN)                                                    \
            common_log(LOG_LEVEL_WARN, errno, __VA_ARGS__);                                        \
    } while (0)
#define log_warnx(...)                                                                              \
    do {                                                                                           \
        if (common_log_level >= LOG_LEVEL_WARN)                                                    \
            common_log(LOG_LEVEL_WARN, 0, __VA_ARGS__);                                            \
    } while (0)
#define log_info(...)                                                                               \
    do {                                                                                           \
        if (common_log_level >= LOG_LEVEL_INFO)                                                    \
            common_log(LOG_LEVEL_INFO, 0, __VA_ARGS__);                                            \
    } while (0)
#define log_debug(...)                                                                              \
    do {                                                                                           \
        if (common_log_level >= LOG_LEVEL_DEBUG)                                                   \
            common_log(LOG_LEVEL_DEBUG, 0, __VA_ARGS__);                                           \
    } while (0)
#define log_error(...) common_log(LOG_LEVEL_ERROR, 0, __VA_ARGS__)

/**
 * Logs msg with fields: kv holds n_kv/2 key, value pairs (values are escaped; keys are
 * trusted identifiers). Text: "msg k=v k=\"v w\"". JSON: {"time","level","msg",k:v...}.
 */
void log_fields(enum log_level level, const char *msg, const char *const *kv, size_t n_kv);

/** Logs at any level (text or JSON), for the few lines scripts wait for. */
void log_always(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Logs the error's message at error level (one line) and frees nothing. */
void log_err(const struct err *e);

/**
 * Escapes untrusted bytes for a log line or terminal: printable ASCII passes except \ and ",
 * which are backslash-escaped; everything else becomes \n, \t or \xHH. At most max input bytes are escaped; "..." marks a cut. Owned.
 */
char *log_escape(const void *data, size_t len, size_t max);

/**
 * log_escape() of text from outside (an upstream's error message) after every occurrence of
 * each of secrets (NULL-terminated; NULL: none; ones shorter than 4 bytes are not looked for,
 * as they would match ordinary words) is replaced by "[redacted]": in that order, so that no
 * cut leaves a piece of a secret. Owned.
 */
char *log_escape_redact(const void *data, size_t len, size_t max, const char *const *secrets);

/* --------------------------------------------------------------- buffers */

/** A growable byte buffer with a mandatory cap (STYLE R-24). Always NUL-terminated. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
    bool wipe; /* it may hold secrets: wiped when it grows (no copy left behind) and freed */
};

/** Initializes an empty buffer that may hold at most max bytes. */
void buf_init(struct buf *b, size_t max);
/** Appends; on exceeding the cap the buffer is freed and ERR_LIMIT is set. */
int buf_append(struct buf *b, const void *data, size_t len, struct err **errp);
int buf_printf(struct buf *b, struct err **errp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** Frees the data and resets the buffer (keeps the cap). Accepts an unused buffer. */
void buf_free(struct buf *b);
/** Hands the data out (owned, NUL-terminated) and resets the buffer. */
char *buf_steal(struct buf *b, size_t *len_out);

/* ------------------------------------------------------------ misc utils */

/** The value of a hex digit (either case), or -1. */
int util_hexval(char c);

/**
 * Whether s[0..len) is well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates,
 * nothing above U+10FFFF. JSON text must be, and jansson refuses to encode anything else.
 */
bool util_utf8_valid(const char *s, size_t len);

/*
 * The most values a JSON text from outside (a model's answer, an MCP server's, an error body)
 * may hold before it is parsed. A byte cap does not bound what parsing takes: 32 MiB of
 * "[{},{},..." is 8 million objects, 2.5 GB in jansson. 256 Ki values are ~80 MB at worst.
 */
#define UTIL_JSON_VALUES_MAX (256u * 1024)

/**
 * Whether the JSON text s[0..len) holds at most about max values, counted in one pass without
 * parsing as the openings ('[', '{') and commas outside strings: about one per value (an
 * array or object, a member, an element). Text that is not JSON counts somehow; the parser
 * refuses it after.
 */
bool util_json_values_within(const char *s, size_t len, size_t max);

/** Fills buf with n random bytes from getrandom(2). */
int util_random(void *buf, size_t n, struct err **errp);

/**
 * Loads the len-byte key at path into key, making it first (random, 0600) when there is none.
 * Made under a temporary name and linked into place, so processes racing to make it all end up
 * with the one that won, and none ever reads a half-written file. A file of another size is an
 * error, never replaced.
 */
int util_key_file(const char *path, void *key, size_t len, struct err **errp);
/** Replaces in s every control character and byte past ASCII by '?': text from outside made
 * safe for a terminal and for JSON. */
void util_printable(char *s);

/**
 * Writes "<prefix>" followed by 26 lower-case base32 characters of 128 random bits into out,
 * which must hold strlen(prefix) + 27 bytes.
 */
int util_id_new(const char *prefix, char *out, size_t outlen, struct err **errp);

/** True when s is prefix + 26 base32 characters, the form util_id_new() makes. */
bool util_id_valid(const char *prefix, const char *s);

/**
 * Parses a size: digits with an optional K, M, G or T suffix (powers of 1024, optionally
 * followed by "i", "iB" or "B"). Rejects empty strings, signs, junk and overflow.
 */
int util_parse_size(const char *s, uint64_t *out, struct err **errp);

/** Parses a non-negative decimal integer no larger than max. */
int util_parse_u64(const char *s, uint64_t max, uint64_t *out, struct err **errp);

/** Formats bytes as "16 GiB", "512 MiB", "1.5 KiB" into out. */
void util_format_size(uint64_t bytes, char *out, size_t outlen);

/** Milliseconds since the Unix epoch. */
int64_t util_now_ms(void);
/** Start time of a process (field 22 of /proc/PID/stat); 0 when it is gone or a zombie. */
uint64_t util_proc_start_time(pid_t pid);
/**
 * This boot's identity (/proc/sys/kernel/random/boot_id, 36 characters) into out; -1 when the
 * kernel does not tell. A pid and a start time name one process only within one boot.
 */
int util_boot_id(char out[static 37]);
/**
 * The running program's GNU build id (.note.gnu.build-id) in hex, or "unknown" when the
 * linker left none: tells one build of paddock from another.
 */
const char *util_build_id(void);
/** Monotonic nanoseconds. */
int64_t util_mono_ns(void);
/**
 * Monotonic milliseconds: for intervals and deadlines within one process (timeouts, rates,
 * periods), which the wall clock being set must not stretch or fire. util_now_ms() is for
 * times that are recorded or compared across processes.
 */
int64_t util_mono_ms(void);
/**
 * The CLOCK_MONOTONIC time ms (at least 0) from now, as an absolute timeout for
 * pthread_cond_clockwait(..., CLOCK_MONOTONIC, ...): one the wall clock being set can
 * neither stretch nor cut short.
 */
struct timespec util_deadline(int64_t ms);
/** Formats ms since the epoch as RFC 3339 UTC with milliseconds into out (>= 32 bytes). */
void util_format_time(int64_t ms, char *out, size_t outlen);

/** write(2) until everything is written or an error; retries EINTR. Returns 0 or -1/errno. */
int util_write_all(int fd, const void *data, size_t len);
/** read(2) exactly len bytes; returns 0, or -1 with errno (EPIPE-like 0 bytes → errno=EIO). */
int util_read_exact(int fd, void *data, size_t len);

/**
 * Reads a whole file (at most max bytes) relative to dirfd; the result is NUL-terminated
 * and owned. ERR_LIMIT past max, ERR_NOT_FOUND when missing.
 */
int util_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *len_out,
                      struct err **errp);

/**
 * Creates or replaces path relative to dirfd atomically (temp file + rename) with mode. The
 * data is fsync()ed before the rename unless mode has UTIL_WRITE_NOSYNC set.
 */
#define UTIL_WRITE_NOSYNC 0x10000u
int util_write_file_at(int dirfd, const char *path, const void *data, size_t len, unsigned mode,
                       struct err **errp);

/** Creates every missing directory of path (absolute or relative to cwd) with mode. */
int util_mkdir_p(const char *path, unsigned mode, struct err **errp);

#include "banned.h"

#endif
