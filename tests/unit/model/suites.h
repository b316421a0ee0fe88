/* The test groups of unit_model; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_MODEL_SUITES_H
#define PADDOCK_TEST_MODEL_SUITES_H

int test_wire_run(void);
int test_decode_run(void);
int test_http_run(void);
int test_prices_run(void);
int test_fake_run(void);

#endif
