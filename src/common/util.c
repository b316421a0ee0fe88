/* Ids, sizes, time and small fd helpers. */
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <pthread.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

int
util_random(void *buf, size_t n, struct err **errp)
{
    unsigned char *p = buf;

    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return err_set(errp, ERR_INTERNAL, errno, "getrandom");
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int
key_read(const char *path, void *key, size_t len, struct err **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    int rc = 0;

    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "open %s", path);
    if (fstat(fd, &st) < 0 || (size_t)st.st_size != len || !S_ISREG(st.st_mode))
        rc = err_set(errp, ERR_INTERNAL, 0, "%s is not a %zu-byte key", path, len);
    else if (st.st_uid != geteuid() || (st.st_mode & 077) != 0)
        /* A key others can read (or replace) protects nothing: refuse rather than use it. */
        rc = err_set(errp, ERR_INTERNAL, 0,
                     "%s must belong to uid %d and be readable by it alone (mode 0600); it is "
                     "uid %d, mode %04o",
                     path, (int)geteuid(), (int)st.st_uid, (unsigned)(st.st_mode & 07777));
    else if (util_read_exact(fd, key, len) < 0)
        rc = err_set(errp, ERR_INTERNAL, 0, "%s is not a %zu-byte key", path, len);
    close(fd);
    return rc;
}

int
util_key_file(const char *path, void *key, size_t len, struct err **errp)
{
    struct err *e = NULL;
    char *tmp;
    int fd, rc = 0;

    if (key_read(path, key, len, &e) == 0)
        return 0;
    if (e->errnum != ENOENT) {
        if (errp != NULL)
            *errp = e;
        else
            err_free(e);
        return -1;
    }
    err_free(e);
    if (util_random(key, len, errp) < 0)
        return -1;
    tmp = xasprintf("%s.%d.%d", path, (int)getpid(), (int)gettid()); /* one per thread */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        rc = err_set(errp, ERR_IO, errno, "create %s", tmp);
    else {
        if (util_write_all(fd, key, len) < 0 || fsync(fd) < 0)
            rc = err_set(errp, ERR_IO, errno, "write %s", tmp);
        close(fd);
        if (rc == 0 && link(tmp, path) < 0 && errno != EEXIST) /* EEXIST: another won */
            rc = err_set(errp, ERR_IO, errno, "link %s", path);
        unlink(tmp);
    }
    free(tmp);
    explicit_bzero(key, len);
    return rc < 0 ? rc : key_read(path, key, len, errp);
}

static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";

int
util_id_new(const char *prefix, char *out, size_t outlen, struct err **errp)
{
    unsigned char raw[16];
    size_t plen = strlen(prefix);
    uint64_t acc = 0;
    int bits = 0;
    size_t o = plen;

    ASSERT(outlen >= plen + 27);
    if (util_random(raw, sizeof(raw), errp) < 0)
        return -1;
    memcpy(out, prefix, plen);
    for (size_t i = 0; i < sizeof(raw); i++) {
        acc = (acc << 8) | raw[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = b32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = b32[(acc << (5 - bits)) & 31];
    out[o] = '\0';
    return 0;
}

bool
util_id_valid(const char *prefix, const char *s)
{
    size_t plen = strlen(prefix);

    if (strncmp(s, prefix, plen) != 0 || strlen(s) != plen + 26)
        return false;
    for (const char *p = s + plen; *p != '\0'; p++)
        if (strchr(b32, *p) == NULL)
            return false;
    return true;
}

int
util_parse_u64(const char *s, uint64_t max, uint64_t *out, struct err **errp)
{
    uint64_t v = 0;

    if (s == NULL || *s == '\0')
        return err_set(errp, ERR_INVALID, 0, "empty number");
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return err_set(errp, ERR_INVALID, 0, "'%s' is not a non-negative integer", s);
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return err_set(errp, ERR_INVALID, 0, "'%s' is too large", s);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return err_set(errp, ERR_INVALID, 0, "'%s' is larger than %" PRIu64, s, max);
    *out = v;
    return 0;
}

int
util_parse_size(const char *s, uint64_t *out, struct err **errp)
{
    const char *p = s;
    uint64_t v = 0, mult = 1;
    bool digits = false;

    if (s == NULL)
        return err_set(errp, ERR_INVALID, 0, "empty size");
    for (; *p >= '0' && *p <= '9'; p++) {
        digits = true;
        if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return err_set(errp, ERR_INVALID, 0, "size '%s' is too large", s);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (!digits)
        return err_set(errp, ERR_INVALID, 0,
                       "size '%s' must be a number with an optional K, M, G or T suffix", s);
    switch (*p) {
    case '\0':
        break;
    case 'k':
    case 'K':
        mult = 1ULL << 10;
        break;
    case 'm':
    case 'M':
        mult = 1ULL << 20;
        break;
    case 'g':
    case 'G':
        mult = 1ULL << 30;
        break;
    case 't':
    case 'T':
        mult = 1ULL << 40;
        break;
    default:
        return err_set(errp, ERR_INVALID, 0,
                       "size '%s' must be a number with an optional K, M, G or T suffix", s);
    }
    if (*p != '\0') {
        p++;
        if (strcmp(p, "") != 0 && strcmp(p, "i") != 0 && strcmp(p, "iB") != 0 &&
            strcmp(p, "B") != 0)
            return err_set(errp, ERR_INVALID, 0,
                           "size '%s' must be a number with an optional K, M, G or T suffix", s);
    }
    if (mult > 1 && v > UINT64_MAX / mult)
        return err_set(errp, ERR_INVALID, 0, "size '%s' is too large", s);
    *out = v * mult;
    return 0;
}

void
util_format_size(uint64_t bytes, char *out, size_t outlen)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    unsigned u = 0;
    uint64_t whole = bytes, rem = 0;

    while (whole >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        rem = whole % 1024;
        whole /= 1024;
        u++;
    }
    if (rem == 0)
        snprintf(out, outlen, "%" PRIu64 " %s", whole, units[u]);
    else
        snprintf(out, outlen, "%.1f %s", (double)whole + (double)rem / 1024.0, units[u]);
}

int64_t
util_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
util_mono_ms(void)
{
    return util_mono_ns() / 1000000;
}

struct timespec
util_deadline(int64_t ms)
{
    struct timespec ts;

    if (ms < 0)
        ms = 0; /* a negative tv_nsec would make every wait fail with EINVAL */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int64_t
util_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void
util_format_time(int64_t ms, char *out, size_t outlen)
{
    /* Floor division, so times before the epoch come out right too. */
    int64_t msec = ((ms % 1000) + 1000) % 1000;
    time_t secs = (time_t)((ms - msec) / 1000);
    struct tm tm;

    gmtime_r(&secs, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)msec);
}

int
util_write_all(int fd, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int
util_read_exact(int fd, void *data, size_t len)
{
    char *p = data;

    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int
util_read_file_at(int dirfd, const char *path, size_t max, char **out, size_t *len_out,
                  struct err **errp)
{
    cleanup_close int fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct buf b;
    char chunk[8192];

    if (fd < 0)
        return err_set(errp, errno == ENOENT ? ERR_NOT_FOUND : ERR_IO, errno, "open %s", path);
    buf_init(&b, max);
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            buf_free(&b);
            return err_set(errp, ERR_IO, errno, "read %s", path);
        }
        if (r == 0)
            break;
        if (buf_append(&b, chunk, (size_t)r, errp) < 0)
            return err_wrap(errp, "read %s", path);
    }
    *out = buf_steal(&b, len_out);
    return 0;
}

int
util_write_file_at(int dirfd, const char *path, const void *data, size_t len, unsigned mode,
                   struct err **errp)
{
    cleanup_free char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    cleanup_close int fd = -1;
    bool sync = !(mode & UTIL_WRITE_NOSYNC);

    mode &= 07777;
    /* A new file, never whatever had the name (a FIFO would block the open; in a volume a
     * sandbox filled, it may be anything): what a crash left there goes first. */
    unlinkat(dirfd, tmp, 0);
    fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return err_set(errp, ERR_IO, errno, "create %s", tmp);
    if (util_write_all(fd, data, len) < 0 || fchmod(fd, mode) < 0 || (sync && fsync(fd) < 0)) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        return err_set(errp, ERR_IO, e, "write %s", tmp);
    }
    if (renameat(dirfd, tmp, dirfd, path) < 0) {
        int e = errno;
        unlinkat(dirfd, tmp, 0);
        return err_set(errp, ERR_IO, e, "rename %s", path);
    }
    return 0;
}

int
util_mkdir_p(const char *path, unsigned mode, struct err **errp)
{
    cleanup_free char *p = xstrdup(path);

    if (p[0] == '\0')
        return err_set(errp, ERR_INVALID, 0, "empty directory path");
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST)
            return err_set(errp, ERR_IO, errno, "mkdir %s", p);
        *s = '/';
    }
    if (mkdir(p, mode) < 0 && errno != EEXIST)
        return err_set(errp, ERR_IO, errno, "mkdir %s", p);
    return 0;
}

bool
util_json_values_within(const char *s, size_t len, size_t max)
{
    size_t n = 0;
    bool in_str = false;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++; /* the escaped character, whatever it is */
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if ((c == ',' || c == '[' || c == '{') && ++n > max) {
            return false;
        }
    }
    return true;
}

bool
util_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len;

    while (p < end) {
        unsigned c = *p++;
        unsigned need, min, cp;

        if (c < 0x80)
            continue;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false; /* a continuation byte first, 0xc0/0xc1 (overlong), or above 0xf4 */
        }
        if ((size_t)(end - p) < need)
            return false;
        for (unsigned i = 0; i < need; i++, p++) {
            if ((*p & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (*p & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
    }
    return true;
}

int
util_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

uint64_t
util_proc_start_time(pid_t pid)
{
    char path[64];
    cleanup_free char *stat = NULL;
    const char *p;
    unsigned long long start = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (util_read_file_at(AT_FDCWD, path, 4096, &stat, NULL, NULL) < 0)
        return 0;
    /* The command name may contain spaces and parentheses: fields start after the last ')'. */
    p = strrchr(stat, ')');
    if (p == NULL || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
        return 0; /* a zombie is as dead as a missing process */
    /* field 3 is the state; start time is field 22, i.e. the 20th after ')'. */
    for (int field = 2; field < 22 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    if (p == NULL || sscanf(p + 1, "%llu", &start) != 1)
        return 0;
    return start;
}

int
util_boot_id(char out[static 37])
{
    cleanup_free char *id = NULL;
    size_t len = 0;

    if (util_read_file_at(AT_FDCWD, "/proc/sys/kernel/random/boot_id", 64, &id, &len, NULL) < 0)
        return -1;
    while (len > 0 && id[len - 1] == '\n')
        len--;
    if (len != 36)
        return -1;
    memcpy(out, id, 36);
    out[36] = '\0';
    return 0;
}

static char build_id[2 * 64 + 1] = "unknown";
static pthread_once_t build_id_once = PTHREAD_ONCE_INIT;

/* The first object dl_iterate_phdr() reports is the program itself. */
static int
find_build_id(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    (void)arg;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
        if (ph->p_type != PT_NOTE)
            continue;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            const unsigned char *desc =
                (const unsigned char *)p + sizeof(*nh) + ((nh->n_namesz + 3) & ~3u);
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 &&
                memcmp(p + sizeof(*nh), "GNU", 4) == 0 && nh->n_descsz <= 64 &&
                (const char *)desc + nh->n_descsz <= end) {
                for (size_t k = 0; k < nh->n_descsz; k++)
                    snprintf(build_id + 2 * k, 3, "%02x", desc[k]);
                return 1;
            }
            p = (const char *)desc + ((nh->n_descsz + 3) & ~3u);
        }
    }
    return 1;
}

static void
read_build_id(void)
{
    dl_iterate_phdr(find_build_id, NULL);
}

const char *
util_build_id(void)
{
    pthread_once(&build_id_once, read_build_id);
    return build_id;
}

void
util_printable(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            *s = '?';
}
