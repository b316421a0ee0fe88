/*
 * Shared by the cmocka unit tests of every module: the system headers and <cmocka.h> in the
 * order cmocka needs (before common.h poisons the banned libc names), and small helpers for
 * temporary directories, errors and fork-isolated checks.
 *
 * A test file includes its own extra system headers first, then this file, then the paddock
 * headers it tests.
 */
#ifndef PADDOCK_TEST_UNIT_H
#define PADDOCK_TEST_UNIT_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/common.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Exit status that ctest treats as "skipped" (SKIP_RETURN_CODE). */
#define UNIT_SKIP 77

/** Asserts that *errp holds an error of class code, then frees it and resets *errp. */
#define ASSERT_ERR(errp, want_code) ASSERT_ERR_CONTAINS(errp, want_code, NULL)

/** Same, and the message must contain substr (when substr is not NULL). */
#define ASSERT_ERR_CONTAINS(errp, want_code, substr)                                              \
    do {                                                                                          \
        struct err **ae_errp = (errp);                                                            \
        const char *ae_sub = (substr);                                                            \
        assert_non_null(*ae_errp);                                                                \
        assert_non_null((*ae_errp)->msg);                                                         \
        if ((int)(*ae_errp)->code != (int)(want_code))                                            \
            fail_msg("error code %s (%d), want %s; message: %s", err_code_name((*ae_errp)->code), \
                     (int)(*ae_errp)->code, err_code_name(want_code), (*ae_errp)->msg);           \
        if (ae_sub != NULL && strstr((*ae_errp)->msg, ae_sub) == NULL)                            \
            fail_msg("error message '%s' does not contain '%s'", (*ae_errp)->msg, ae_sub);        \
        err_free(*ae_errp);                                                                       \
        *ae_errp = NULL;                                                                          \
    } while (0)

/** Fails the test with the message when *errp is set (a call that should have succeeded). */
#define ASSERT_NO_ERR(rc, errp)                                      \
    do {                                                             \
        int ane_rc = (rc);                                           \
        struct err *ane_e = *(errp);                                 \
        if (ane_rc != 0 || ane_e != NULL)                            \
            fail_msg("unexpected failure (rc %d): %s", ane_rc,       \
                     ane_e != NULL ? ane_e->msg : "(no error set)"); \
    } while (0)

/** Creates a private temporary directory; the path is owned. */
static inline char *
unit_mkdtemp(void)
{
    const char *base = getenv("TMPDIR");
    char *path = xasprintf("%s/paddock-unit.XXXXXX", base != NULL && *base != '\0' ? base : "/tmp");

    if (mkdtemp(path) == NULL) {
        free(path);
        return NULL;
    }
    return path;
}

static inline int
unit_rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/** Removes path and everything under it (never following symlinks). */
static inline void
unit_rm_rf(const char *path)
{
    if (path != NULL)
        nftw(path, unit_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/**
 * Runs fn(arg) in a forked child and returns the raw wait status; when quiet, the child's
 * stderr goes to /dev/null. Used for checks that abort, or that could corrupt memory (under
 * ASan the child dies with a report and the test fails, not the whole executable). fn must
 * not use cmocka assertions: it returns the child's exit status.
 */
static inline int
unit_run_in_child(int (*fn)(void *), void *arg, bool quiet)
{
    int status = 0;
    pid_t pid;

    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (quiet) {
            int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (devnull >= 0)
                dup2(devnull, STDERR_FILENO);
        }
        _exit(fn(arg));
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return status;
}

#endif
