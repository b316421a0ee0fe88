/*
 * Helpers of the unit_model tests: JSON written with ' for " (and ` for an escaped quote
 * inside a JSON string) so that expected bodies read like the wire, and a structural compare
 * that prints both sides when they differ.
 */
#ifndef PADDOCK_TEST_MODEL_H
#define PADDOCK_TEST_MODEL_H

#include "../unit.h"

#include <jansson.h>

#include "model/model_int.h"

/** Parses tmpl after turning ' into " and ` into \"; fails the test on bad JSON. Owned. */
static inline json_t *
jl(const char *tmpl)
{
    size_t n = strlen(tmpl);
    char *s = xmalloc(2 * n + 1), *o = s;
    json_error_t je;
    json_t *v;

    for (const char *p = tmpl; *p != '\0'; p++) {
        if (*p == '\'') {
            *o++ = '"';
        } else if (*p == '`') {
            *o++ = '\\';
            *o++ = '"';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    v = json_loads(s, JSON_DECODE_ANY, &je);
    if (v == NULL)
        fail_msg("bad test JSON (%s at %d): %s", je.text, je.position, s);
    free(s);
    return v;
}

/** Fails unless got equals the JSON of want_tmpl structurally; borrows got. */
#define ASSERT_JSON_EQ(got, want_tmpl)                                                     \
    do {                                                                                   \
        json_t *aje_want = jl(want_tmpl);                                                  \
        const json_t *aje_got = (got);                                                     \
        if (!json_equal(aje_got, aje_want)) {                                              \
            char *aje_g = json_dumps(aje_got, JSON_SORT_KEYS | JSON_ENCODE_ANY);           \
            char *aje_w = json_dumps(aje_want, JSON_SORT_KEYS | JSON_ENCODE_ANY);          \
            fail_msg("JSON differs\n got: %s\nwant: %s", aje_g ? aje_g : "(null)", aje_w); \
        }                                                                                  \
        json_decref(aje_want);                                                             \
    } while (0)

#endif
