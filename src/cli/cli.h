/* cli — the paddock command line: argument parsing and output; the logic lives in env/. */
#ifndef PADDOCK_CLI_H
#define PADDOCK_CLI_H

/** Runs paddock with argv; returns the process exit status. */
int cli_main(int argc, char **argv);

#endif
