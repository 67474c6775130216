/* TCP echo server on the zcn C API (the seed's examples/tcp_echo).
 *
 *   tcp_echo [port [address]]      port 8080 and address 127.0.0.1 by default;
 *                                  port 0 picks a free one (printed)
 *   echo hello | nc -N 127.0.0.1 8080
 *   socat - TCP:127.0.0.1:8080
 *
 * Every received buffer goes back through the built-in C echo handler
 * without a copy. SIGINT/SIGTERM stop the loop through zcn_server_stop (it
 * is async-signal-safe); the stats are printed on the way out. */
#define _POSIX_C_SOURCE 200809L /* sigaction */
#include <zero_copy_net.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ZCN_Server *server;

static void on_signal(int sig)
{
    (void)sig;
    zcn_server_stop(server);
}

static void on_accept(void *user_data, int fd)
{
    (void)user_data;
    printf("connection fd=%d\n", fd);
}

static void on_close(void *user_data, int fd)
{
    (void)user_data;
    printf("closed fd=%d\n", fd);
}

int main(int argc, char **argv)
{
    long port = 8080;
    const char *address = "127.0.0.1";
    if (argc > 1) {
        char *end;
        errno = 0;
        port = strtol(argv[1], &end, 10);
        if (errno != 0 || *end != '\0' || port < 0 || port > 65535) {
            fprintf(stderr, "usage: %s [port [address]]\n", argv[0]);
            return 2;
        }
    }
    if (argc > 2)
        address = argv[2];
    setvbuf(stdout, NULL, _IOLBF, 0);

    ZCN_Config config = {.address = address, .port = (uint16_t)port};
    ZCN_Error err = ZCN_OK;
    server = zcn_server_create(&config, &err);
    if (server == NULL) {
        fprintf(stderr, "tcp_echo: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    zcn_server_set_callbacks(server, NULL, on_accept, NULL, on_close);
    zcn_server_use_echo_handler(server); /* replaces on_data only */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    err = zcn_server_start(server);
    if (err == ZCN_OK) {
        printf("tcp_echo listening on %s:%u\n", address, zcn_server_port(server));
        err = zcn_server_run(server); /* until zcn_server_stop */
    }
    if (err != ZCN_OK)
        fprintf(stderr, "tcp_echo: %s: %s\n", zcn_strerror(err), zcn_error_detail());

    ZCN_ServerStats st;
    zcn_server_stats(server, &st);
    printf("stats: accepted=%" PRIu64 " closed=%" PRIu64 " rejected=%" PRIu64
           " bytes_received=%" PRIu64 " bytes_sent=%" PRIu64 " zero_copy_sends=%" PRIu64
           " buffer_exhaustion=%" PRIu64 "\n",
           st.connections_accepted, st.connections_closed, st.connections_rejected,
           st.bytes_received, st.bytes_sent, st.sends_zero_copy, st.buffer_exhaustion_events);
    zcn_server_destroy(server);
    return err == ZCN_OK ? 0 : 1;
}
