/* unit_common: runs every test group of src/common/. */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_err_run();
    failed += test_mem_run();
    failed += test_log_run();
    failed += test_util_run();
    failed += test_codec_log_run();
    return failed == 0 ? 0 : 1;
}
