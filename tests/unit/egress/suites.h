/* The test groups of unit_egress; each returns its number of failed tests. */
#ifndef PADDOCK_TEST_EGRESS_SUITES_H
#define PADDOCK_TEST_EGRESS_SUITES_H

int test_host_run(void);
int test_policy_run(void);
int test_addr_run(void);
int test_tag_run(void);
int test_tls_run(void);
int test_audit_run(void);

#endif
