/* unit_egress: runs every test group of src/egress/ that needs no proxy, no socket, no root
 * (and the attribution tag of src/env/, which only the proxy checks). */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_host_run();
    failed += test_policy_run();
    failed += test_addr_run();
    failed += test_tag_run();
    failed += test_tls_run();
    failed += test_audit_run();
    return failed == 0 ? 0 : 1;
}
