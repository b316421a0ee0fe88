/*
 * A fresh store in a private temporary directory, for cmocka groups that test code against
 * the real database (setup/teardown for cmocka_unit_test_setup_teardown; *state is a
 * struct store_fixture).
 */
#ifndef PADDOCK_UNIT_STORE_FIXTURE_H
#define PADDOCK_UNIT_STORE_FIXTURE_H

#include "unit.h"

#include "store/store.h"

struct store_fixture {
    char *dir;
    struct store *s;
};

static inline int
store_fixture_setup(void **state)
{
    struct store_fixture *f = xcalloc(1, sizeof(*f));
    cleanup_free char *db = NULL;
    struct err *e = NULL;

    *state = f;
    f->dir = unit_mkdtemp();
    if (f->dir == NULL)
        return -1;
    db = xasprintf("%s/paddock.db", f->dir);
    if (store_open(db, &f->s, &e) < 0) {
        err_free(e);
        return -1;
    }
    return 0;
}

static inline int
store_fixture_teardown(void **state)
{
    struct store_fixture *f = *state;

    store_close(f->s);
    unit_rm_rf(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

#endif
