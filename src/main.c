/* paddock: wires the modules together; everything else lives in src/<module>/. */
#include "cli/cli.h"

int
main(int argc, char **argv)
{
    return cli_main(argc, argv);
}
