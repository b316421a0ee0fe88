/* The test groups of unit_store; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_STORE_SUITES_H
#define PADDOCK_TEST_STORE_SUITES_H

int test_store_run(void);
int test_store_api_run(void);
int test_store_agent_run(void);

#endif
