/* unit_sandbox: runs every test group of src/sandbox/ that needs no privileges. */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_files_client_run();
    failed += test_proto_run();
    failed += test_seccomp_run();
    failed += test_spawn_run();
    return failed == 0 ? 0 : 1;
}
