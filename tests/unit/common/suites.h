/* The test groups of unit_common; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_COMMON_SUITES_H
#define PADDOCK_TEST_COMMON_SUITES_H

int test_util_run(void);
int test_err_run(void);
int test_mem_run(void);
int test_log_run(void);
int test_codec_log_run(void);

#endif
