/* The zcn side of the echo benchmark with the built-in C handler
 * (zcn_server_use_echo_handler: each received buffer is sent back without a
 * copy): what a C user of the library would write. No Python involved.
 *
 * usage: zcn_echo [--host 127.0.0.1] [--port 0] [--buffer-size BYTES]
 *                 [--buffers N] [--connections-max N] [--entries N]
 *                 [--backlog N] [--send-queue-max BYTES] [--send-timeout MS|never]
 *                 [--busy-poll US]
 * (0 or absent = the library's default). Prints
 * "zcn_echo listening on HOST:PORT (...config...)" and serves until
 * SIGINT/SIGTERM, then prints the server's counters on stderr; SIGUSR1
 * prints them (one "zcn_echo stats:" line) and goes on serving.
 */
#include "zero_copy_net.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static ZCN_Server *server;
static volatile sig_atomic_t quit, want_stats;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        want_stats = 1;
    else
        quit = 1;
    zcn_server_stop(server); /* async-signal-safe */
}

static void print_stats(void)
{
    ZCN_ServerStats st;
    zcn_server_stats(server, &st);
    ZCN_LoopStats ls;
    zcn_loop_stats(zcn_server_get_loop(server), &ls);
    fprintf(stderr,
            "zcn_echo stats: accepted=%llu rejected=%llu recv_ops=%llu send_ops=%llu "
            "sends_zero_copy=%llu sends_copied=%llu bytes_received=%llu "
            "buffer_exhaustion_events=%llu send_queue_full_events=%llu active=%llu "
            "buffers_in_use=%llu buffers_held=%llu buffer_budget=%llu evictions=%llu "
            "send_timeouts=%llu hard_limit_aborts=%llu busy_polls_found=%llu "
            "busy_polls_expired=%llu sends_direct=%llu turns=%llu\n",
            (unsigned long long)st.connections_accepted,
            (unsigned long long)st.connections_rejected, (unsigned long long)st.recv_ops,
            (unsigned long long)st.send_ops, (unsigned long long)st.sends_zero_copy,
            (unsigned long long)st.sends_copied, (unsigned long long)st.bytes_received,
            (unsigned long long)st.buffer_exhaustion_events,
            (unsigned long long)st.send_queue_full_events,
            (unsigned long long)st.connections_active, (unsigned long long)st.buffers_in_use,
            (unsigned long long)st.buffers_held, (unsigned long long)st.buffer_budget,
            (unsigned long long)st.evictions, (unsigned long long)st.send_timeouts,
            (unsigned long long)st.hard_limit_aborts, (unsigned long long)ls.busy_polls_found,
            (unsigned long long)ls.busy_polls_expired, (unsigned long long)st.sends_direct,
            (unsigned long long)ls.turns);
}

int main(int argc, char **argv)
{
    ZCN_Config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.address = "127.0.0.1";
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},
        {"buffer-size", required_argument, 0, 's'},
        {"buffers", required_argument, 0, 'n'},
        {"connections-max", required_argument, 0, 'c'},
        {"entries", required_argument, 0, 'e'},
        {"backlog", required_argument, 0, 'b'},
        {"send-queue-max", required_argument, 0, 'q'},
        {"send-timeout", required_argument, 0, 't'},
        {"busy-poll", required_argument, 0, 'u'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        unsigned long v = optarg ? strtoul(optarg, NULL, 10) : 0;
        switch (ch) {
        case 'h': cfg.address = optarg; break;
        case 'p': cfg.port = (uint16_t)v; break;
        case 's': cfg.buffer_size = (uint32_t)v; break;
        case 'n': cfg.buffer_pool_size = (uint32_t)v; break;
        case 'c': cfg.connections_max = (uint32_t)v; break;
        case 'e': cfg.io_uring_entries = (uint32_t)v; break;
        case 'b': cfg.backlog = (uint32_t)v; break;
        case 'q': cfg.send_queue_max_bytes = (uint32_t)v; break;
        case 'u': cfg.busy_poll_us = (uint32_t)v; break;
        case 't': cfg.send_timeout_ms = strcmp(optarg, "never") == 0 ? ZCN_TIMEOUT_NEVER : (uint32_t)v; break;
        default:
            fprintf(stderr, "usage: zcn_echo [--host H] [--port P] [--buffer-size B] [--buffers N]\n"
                            "                [--connections-max N] [--entries N] [--backlog N]\n"
                            "                [--send-queue-max B] [--send-timeout MS|never]\n"
                            "                [--busy-poll US]\n");
            return 2;
        }
    }
    /* connections_max is capped by RLIMIT_NOFILE at create time. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ZCN_Error err;
    server = zcn_server_create(&cfg, &err);
    if (server == NULL) {
        fprintf(stderr, "zcn_echo: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    if ((err = zcn_server_use_echo_handler(server)) != ZCN_OK ||
        (err = zcn_server_start(server)) != ZCN_OK) {
        fprintf(stderr, "zcn_echo: %s: %s\n", zcn_strerror(err), zcn_error_detail());
        return 1;
    }
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_signal;
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGUSR1, &act, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("zcn_echo listening on %s:%u (buffer_size=%zu buffers=%u connections_max=%u "
           "entries=%u backlog=%u busy_poll_us=%u)\n",
           cfg.address, zcn_server_port(server), zcn_server_buffer_size(server),
           cfg.buffer_pool_size ? cfg.buffer_pool_size : 1024,
           cfg.connections_max ? cfg.connections_max : 4096,
           cfg.io_uring_entries ? cfg.io_uring_entries : 256, cfg.backlog ? cfg.backlog : 1024,
           cfg.busy_poll_us);
    fflush(stdout);
    do {
        err = zcn_server_run(server);
        if (want_stats) {
            want_stats = 0;
            print_stats();
        }
    } while (err == ZCN_OK && !quit);
    print_stats();
    zcn_server_destroy(server);
    return err == ZCN_OK ? 0 : 1;
}
