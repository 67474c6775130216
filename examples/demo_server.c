/* The demo servers as a program: an HTTP/1.1 "Hello, world!" server or a
 * RESP2 key/value store (examples/http_server.c, examples/resp_server.c)
 * on one zcn loop.
 *
 *   demo_server http [port [address]]    curl http://127.0.0.1:8080/
 *   demo_server resp [port [address]]    redis-cli -p 6380 set k v
 *
 * Port 0 picks a free one (printed). SIGINT/SIGTERM stop the loop through
 * zcn_loop_stop, which is async-signal-safe; the counters are printed on
 * the way out. `python -m zcn http|resp` runs the same code. */
#define _POSIX_C_SOURCE 200809L /* sigaction */
#include <zero_copy_net.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ZCN_Loop *loop;

static void on_signal(int sig)
{
    (void)sig;
    zcn_loop_stop(loop);
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "http") != 0 && strcmp(argv[1], "resp") != 0)) {
        fprintf(stderr, "usage: %s http|resp [port [address]]\n", argv[0]);
        return 2;
    }
    long port = strcmp(argv[1], "http") == 0 ? 8080 : 6380;
    if (argc > 2) {
        char *end;
        errno = 0;
        port = strtol(argv[2], &end, 10);
        if (errno != 0 || *end != '\0' || port < 0 || port > 65535) {
            fprintf(stderr, "usage: %s http|resp [port [address]]\n", argv[0]);
            return 2;
        }
    }
    ZCN_DemoConfig config = {.address = argc > 3 ? argv[3] : "127.0.0.1",
                             .port = (uint16_t)port};
    setvbuf(stdout, NULL, _IOLBF, 0);

    ZCN_Error err = ZCN_OK;
    loop = zcn_loop_create(NULL, &err);
    if (loop == NULL) {
        fprintf(stderr, "demo_server: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    ZCN_Demo *demo = strcmp(argv[1], "http") == 0 ? zcn_demo_http_create(loop, &config, &err)
                                                  : zcn_demo_resp_create(loop, &config, &err);
    if (demo == NULL) {
        fprintf(stderr, "demo_server: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        zcn_loop_destroy(loop);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    printf("demo_server %s listening on %s:%u\n", argv[1], config.address, zcn_demo_port(demo));
    err = zcn_loop_run(loop); /* until zcn_loop_stop */
    if (err != ZCN_OK)
        fprintf(stderr, "demo_server: %s: %s\n", zcn_strerror(err), zcn_error_detail());
    ZCN_DemoStats st;
    zcn_demo_stats(demo, &st);
    printf("demo_server stats: requests=%" PRIu64 " protocol_errors=%" PRIu64
           " limit_errors=%" PRIu64 " output_aborts=%" PRIu64 " keys=%" PRIu64
           " output_holds=%" PRIu64 " hold_aborts=%" PRIu64 "\n",
           st.requests, st.protocol_errors, st.limit_errors, st.output_aborts, st.keys,
           st.output_holds, st.hold_aborts);
    zcn_demo_destroy(demo);
    zcn_loop_destroy(loop);
    return err == ZCN_OK ? 0 : 1;
}
