/* UDP echo server on zero_copy_net: every datagram goes back to its sender
 * from the same pool buffer it arrived in (no copy).
 *
 *   ./udp_echo [address] [port]          default 127.0.0.1 9999
 *   echo hello | socat -t1 - UDP:127.0.0.1:9999
 *   nc -u 127.0.0.1 9999
 *
 * Ctrl-C stops it (zcn_udp_stop is async-signal-safe) and prints the
 * counters. */
#define _POSIX_C_SOURCE 200809L /* sigaction */
#include <zero_copy_net.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static ZCN_UdpSocket *g_sock;

static void on_signal(int sig)
{
    (void)sig;
    zcn_udp_stop(g_sock);
}

int main(int argc, char **argv)
{
    ZCN_UdpConfig cfg = {0};
    cfg.address = argc > 1 ? argv[1] : "127.0.0.1";
    cfg.port = (uint16_t)(argc > 2 ? atoi(argv[2]) : 9999);
    cfg.buffer_count = 1024;
    ZCN_Error err;
    g_sock = zcn_udp_create(&cfg, &err);
    if (g_sock == NULL) {
        fprintf(stderr, "udp_echo: %s (%s)\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    zcn_udp_use_echo_handler(g_sock);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    printf("udp_echo listening on %s %u\n", cfg.address, zcn_udp_port(g_sock));
    fflush(stdout);
    err = zcn_udp_run(g_sock);
    if (err != ZCN_OK)
        fprintf(stderr, "udp_echo: %s (%s)\n", zcn_strerror(err), zcn_error_detail());
    ZCN_UdpStats st;
    zcn_udp_stats(g_sock, &st);
    fprintf(stderr, "received %llu datagrams, sent %llu, truncated %llu, kernel drops %llu\n",
            (unsigned long long)st.datagrams_received, (unsigned long long)st.datagrams_sent,
            (unsigned long long)st.truncated, (unsigned long long)st.kernel_drops);
    zcn_udp_destroy(g_sock);
    return err == ZCN_OK ? 0 : 1;
}
