/* What the seed's "C Integration Example" leaves out; force-included
 * (-include) so the example itself compiles unchanged. */
#include <stdio.h>
#include <signal.h>
static volatile sig_atomic_t running = 1;
