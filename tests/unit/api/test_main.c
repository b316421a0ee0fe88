/* unit_api: runs every test group of src/api/ that needs no server. */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_codec_run();
    failed += test_keys_run();
    failed += test_oauth_run();
    return failed == 0 ? 0 : 1;
}
