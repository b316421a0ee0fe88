/* unit_model: the wire formats, the transport against a server in a thread, and prices. */
#include "../unit.h"

#include "suites.h"

int
main(void)
{
    int failed = 0;

    failed += test_wire_run();
    failed += test_decode_run();
    failed += test_http_run();
    failed += test_prices_run();
    failed += test_fake_run();
    return failed == 0 ? 0 : 1;
}
