/* The test groups of unit_sandbox; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_SANDBOX_SUITES_H
#define PADDOCK_TEST_SANDBOX_SUITES_H

int test_files_client_run(void);
int test_proto_run(void);
int test_seccomp_run(void);
int test_spawn_run(void);

#endif
