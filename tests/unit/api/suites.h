/* The test groups of unit_api; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_API_SUITES_H
#define PADDOCK_TEST_API_SUITES_H

int test_codec_run(void);
int test_keys_run(void);
int test_oauth_run(void);

#endif
