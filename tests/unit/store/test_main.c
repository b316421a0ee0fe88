/* unit_store: runs every test group of src/store/. */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_store_run();
    failed += test_store_api_run();
    failed += test_store_agent_run();
    return failed == 0 ? 0 : 1;
}
