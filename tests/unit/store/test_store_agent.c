/*
 * Tests for what migration 5 added to src/store/store.c: agents, interactions with their
 * steps and events, idempotency keys, recovery lists and retention. Each test runs against
 * a fresh database in a private temp directory.
 */
#include "../store_fixture.h"

#include "store/store.h"
#include "suites.h"

static void
mk(struct store_interaction *it, const char *id, const char *project, int64_t t)
{
    memset(it, 0, sizeof(*it));
    snprintf(it->id, sizeof(it->id), "%s", id);
    snprintf(it->project, sizeof(it->project), "%s", project);
    snprintf(it->key_name, sizeof(it->key_name), "k");
    snprintf(it->status, sizeof(it->status), "queued");
    it->request = (char *)(uintptr_t) "{\"input\":\"hi\"}";
    it->stored = true;
    it->created_ms = it->updated_ms = t;
}

static void
test_interaction_round_trip(void **state)
{
    struct store_fixture *f = *state;
    struct store_interaction it, got;
    struct err *e = NULL;
    char existing[40] = "";

    mk(&it, "int_a", "p", 1000);
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    ASSERT_NO_ERR(store_interaction_get(f->s, "int_a", &got, &e), &e);
    assert_string_equal(got.status, "queued");
    assert_string_equal(got.request, "{\"input\":\"hi\"}");
    assert_null(got.history);
    assert_true(got.stored);
    store_interaction_clear(&got);
    /* update writes status, env, history, usage, errors */
    snprintf(it.status, sizeof(it.status), "completed");
    snprintf(it.env_id, sizeof(it.env_id), "env_x");
    it.history = (char *)(uintptr_t) "[]";
    it.usage = (char *)(uintptr_t) "{\"total_tokens\":3}";
    it.updated_ms = 2000;
    ASSERT_NO_ERR(store_interaction_update(f->s, &it, &e), &e);
    ASSERT_NO_ERR(store_interaction_get(f->s, "int_a", &got, &e), &e);
    assert_string_equal(got.status, "completed");
    assert_string_equal(got.env_id, "env_x");
    assert_string_equal(got.usage, "{\"total_tokens\":3}");
    assert_null(got.errors);
    store_interaction_clear(&got);
    assert_int_equal(store_interaction_get(f->s, "int_missing", &got, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

static void
test_idempotency_keys(void **state)
{
    struct store_fixture *f = *state;
    struct store_interaction a, b, c;
    struct err *e = NULL;
    char existing[40] = "";

    mk(&a, "int_1", "p", 10000);
    ASSERT_NO_ERR(store_interaction_insert(f->s, &a, "key", 0, existing, &e), &e);
    /* the same key in the same project within the window: the first one's id, nothing new */
    mk(&b, "int_2", "p", 10001);
    assert_int_equal(store_interaction_insert(f->s, &b, "key", 5000, existing, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
    assert_string_equal(existing, "int_1");
    {
        struct store_interaction got;
        assert_int_equal(store_interaction_get(f->s, "int_2", &got, &e), -1);
        ASSERT_ERR(&e, ERR_NOT_FOUND);
    }
    /* another project has its own keys */
    mk(&c, "int_3", "q", 10002);
    ASSERT_NO_ERR(store_interaction_insert(f->s, &c, "key", 5000, existing, &e), &e);
    /* past the window the key is free again and points at the new one */
    existing[0] = '\0';
    ASSERT_NO_ERR(store_interaction_insert(f->s, &b, "key", 10001, existing, &e), &e);
    mk(&b, "int_4", "p", 10002);
    assert_int_equal(store_interaction_insert(f->s, &b, "key", 5000, existing, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
    assert_string_equal(existing, "int_2");
}

static void
test_steps_events_and_cascade(void **state)
{
    struct store_fixture *f = *state;
    struct store_interaction it;
    struct store_event *ev = NULL;
    struct err *e = NULL;
    char existing[40];
    char **steps = NULL;
    size_t n = 0;
    int64_t last = -1;

    mk(&it, "int_s", "p", 1);
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    ASSERT_NO_ERR(store_step_put(f->s, "int_s", 0, "{\"type\":\"user_input\"}", &e), &e);
    ASSERT_NO_ERR(store_step_put(f->s, "int_s", 1, "{\"type\":\"x\"}", &e), &e);
    ASSERT_NO_ERR(store_step_put(f->s, "int_s", 1, "{\"type\":\"model_output\"}", &e), &e);
    ASSERT_NO_ERR(store_steps(f->s, "int_s", &steps, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_string_equal(steps[1], "{\"type\":\"model_output\"}"); /* replaced, not added */
    for (size_t i = 0; i < n; i++)
        free(steps[i]);
    free(steps);
    ASSERT_NO_ERR(store_event_last(f->s, "int_s", &last, &e), &e);
    assert_int_equal(last, 0);
    for (int i = 1; i <= 5; i++) {
        char d[32];
        snprintf(d, sizeof(d), "{\"n\":%d}", i);
        ASSERT_NO_ERR(store_event_insert(f->s, "int_s", i, d, &e), &e);
    }
    assert_int_equal(store_event_insert(f->s, "int_s", 3, "{}", &e), -1); /* seq is unique */
    ASSERT_ERR(&e, ERR_CONFLICT);
    ASSERT_NO_ERR(store_events_after(f->s, "int_s", 2, 2, &ev, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].seq, 3);
    assert_string_equal(ev[1].data, "{\"n\":4}");
    for (size_t i = 0; i < n; i++)
        free(ev[i].data);
    free(ev);
    ASSERT_NO_ERR(store_event_last(f->s, "int_s", &last, &e), &e);
    assert_int_equal(last, 5);
    /* deleting the interaction takes its steps and events */
    ASSERT_NO_ERR(store_interaction_delete(f->s, "int_s", &e), &e);
    ASSERT_NO_ERR(store_steps(f->s, "int_s", &steps, &n, &e), &e);
    assert_int_equal(n, 0);
    free(steps);
    ASSERT_NO_ERR(store_event_last(f->s, "int_s", &last, &e), &e);
    assert_int_equal(last, 0);
    assert_int_equal(store_interaction_delete(f->s, "int_s", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

static void
test_recovery_lists_and_retention(void **state)
{
    struct store_fixture *f = *state;
    struct store_interaction it;
    struct err *e = NULL;
    char existing[40];
    char(*ids)[40] = NULL;
    size_t n = 0, purged = 0;

    mk(&it, "int_old", "p", 100);
    snprintf(it.status, sizeof(it.status), "completed");
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    mk(&it, "int_run", "p", 100);
    snprintf(it.status, sizeof(it.status), "in_progress");
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    mk(&it, "int_new", "p", 5000);
    snprintf(it.status, sizeof(it.status), "completed");
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    ASSERT_NO_ERR(store_interaction_ids(f->s, "in_progress", &ids, &n, &e), &e);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], "int_run");
    free(ids);
    /* retention removes ended interactions only */
    ASSERT_NO_ERR(store_interaction_purge(f->s, 1000, 0, &purged, &e), &e);
    assert_int_equal(purged, 0); /* a batch of none */
    ASSERT_NO_ERR(store_interaction_purge(f->s, 1000, 10, &purged, &e), &e);
    assert_int_equal(purged, 1);
    {
        struct store_interaction got;
        assert_int_equal(store_interaction_get(f->s, "int_old", &got, &e), -1);
        ASSERT_ERR(&e, ERR_NOT_FOUND);
        ASSERT_NO_ERR(store_interaction_get(f->s, "int_run", &got, &e), &e);
        store_interaction_clear(&got);
        ASSERT_NO_ERR(store_interaction_get(f->s, "int_new", &got, &e), &e);
        store_interaction_clear(&got);
    }
}

/* A pid and a start time name a process within one boot: a new boot forgets every such name. */
static void
test_boot_forgets_process_names(void **state)
{
    struct store_fixture *f = *state;
    struct store_interaction it, got;
    struct store_env env, out;
    struct err *e = NULL;
    char existing[40];
    int forgot = -1;

    ASSERT_NO_ERR(store_note_boot(f->s, "boot-a", NULL, &e), &e);
    memset(&env, 0, sizeof(env));
    snprintf(env.id, sizeof(env.id), "env_b");
    snprintf(env.project, sizeof(env.project), "p");
    snprintf(env.network, sizeof(env.network), "disabled");
    snprintf(env.image, sizeof(env.image), "host");
    ASSERT_NO_ERR(store_env_insert(f->s, &env, NULL, 16, &e), &e);
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_b", STORE_ENV_RUNNING, 4321, 99, 0, &e), &e);
    mk(&it, "int_b", "p", 100);
    snprintf(it.status, sizeof(it.status), "in_progress");
    snprintf(it.runner, sizeof(it.runner), "4321:99");
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);
    mk(&it, "int_done", "p", 100); /* its runner is history: nothing reads it, nothing clears it */
    snprintf(it.status, sizeof(it.status), "completed");
    snprintf(it.runner, sizeof(it.runner), "4000:7");
    ASSERT_NO_ERR(store_interaction_insert(f->s, &it, NULL, 0, existing, &e), &e);

    /* The same boot again (another process opening the database): nothing is forgotten. */
    ASSERT_NO_ERR(store_note_boot(f->s, "boot-a", &forgot, &e), &e);
    assert_int_equal(forgot, 0);
    ASSERT_NO_ERR(store_env_get(f->s, "env_b", &out, &e), &e);
    assert_int_equal(out.init_pid, 4321);
    assert_int_equal(out.init_start, 99);

    /* Another boot: the init and the runner are forgotten; the rows are otherwise kept (env/
     * finds the init dead and stops the environment, agent/ fails the interaction). */
    ASSERT_NO_ERR(store_note_boot(f->s, "boot-b", &forgot, &e), &e);
    assert_int_equal(forgot, 2);
    ASSERT_NO_ERR(store_env_get(f->s, "env_b", &out, &e), &e);
    assert_int_equal(out.init_pid, 0);
    assert_int_equal(out.init_start, 0);
    assert_int_equal(out.state, STORE_ENV_RUNNING);
    ASSERT_NO_ERR(store_interaction_get(f->s, "int_b", &got, &e), &e);
    assert_string_equal(got.runner, "");
    assert_string_equal(got.status, "in_progress");
    store_interaction_clear(&got);
    ASSERT_NO_ERR(store_interaction_get(f->s, "int_done", &got, &e), &e);
    assert_string_equal(got.runner, "4000:7");
    store_interaction_clear(&got);

    /* A process of the new boot records its init; the new boot, noted again, keeps it. */
    ASSERT_NO_ERR(store_env_set_state(f->s, "env_b", STORE_ENV_RUNNING, 777, 5, 0, &e), &e);
    ASSERT_NO_ERR(store_note_boot(f->s, "boot-b", &forgot, &e), &e);
    assert_int_equal(forgot, 0);
    ASSERT_NO_ERR(store_env_get(f->s, "env_b", &out, &e), &e);
    assert_int_equal(out.init_pid, 777);

    /* A boot id is what the kernel gives, not anything at all. */
    assert_int_equal(store_note_boot(f->s, "", NULL, &e), -1);
    ASSERT_ERR(&e, ERR_INVALID);
    {
        char longer[80];
        memset(longer, 'b', sizeof(longer) - 1);
        longer[sizeof(longer) - 1] = '\0';
        assert_int_equal(store_note_boot(f->s, longer, NULL, &e), -1);
        ASSERT_ERR(&e, ERR_INVALID);
    }
}

static void
test_agents(void **state)
{
    struct store_fixture *f = *state;
    struct store_agent a = { 0 }, got, *v = NULL;
    struct err *e = NULL;
    size_t n = 0;

    snprintf(a.project, sizeof(a.project), "p");
    a.body = (char *)(uintptr_t) "{}";
    for (int i = 0; i < 3; i++) {
        snprintf(a.id, sizeof(a.id), "agent-%d", i);
        ASSERT_NO_ERR(store_agent_insert(f->s, &a, &e), &e);
    }
    assert_int_equal(store_agent_insert(f->s, &a, &e), -1);
    ASSERT_ERR(&e, ERR_CONFLICT);
    ASSERT_NO_ERR(store_agent_page(f->s, "p", "agent-0", 10, &v, &n, &e), &e);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, "agent-1");
    for (size_t i = 0; i < n; i++)
        store_agent_clear(&v[i]);
    free(v);
    assert_int_equal(store_agent_get(f->s, "q", "agent-1", &got, &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
    ASSERT_NO_ERR(store_agent_delete(f->s, "p", "agent-1", &e), &e);
    assert_int_equal(store_agent_delete(f->s, "p", "agent-1", &e), -1);
    ASSERT_ERR(&e, ERR_NOT_FOUND);
}

int
test_store_agent_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_interaction_round_trip, store_fixture_setup,
                                        store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_idempotency_keys, store_fixture_setup,
                                        store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_steps_events_and_cascade, store_fixture_setup,
                                        store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_recovery_lists_and_retention, store_fixture_setup,
                                        store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_agents, store_fixture_setup, store_fixture_teardown),
        cmocka_unit_test_setup_teardown(test_boot_forgets_process_names, store_fixture_setup,
                                        store_fixture_teardown),
    };

    return cmocka_run_group_tests_name("store/agent", tests, NULL, NULL);
}
