/* Linked beside the seed example (not part of it): stdout line-buffered, so
 * what it printed is in the pipe when the harness kills it (the example has
 * no signal handler and never returns on its own). */
#include <stdio.h>

__attribute__((constructor)) static void zcn_line_buffered_stdout(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
}
