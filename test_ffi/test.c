/* The seed's C FFI validation program (test_ffi/test.c), made a real test:
 * a server on an ephemeral port with the seed's three callbacks, a client
 * thread that connects and sends, checks that the callbacks saw exactly
 * that, and a clean shutdown. Built twice by CMake: against the static and
 * against the shared library (CTest "test_ffi_seed" and "test_ffi_seed_shared").
 * Exit 0 pass, 1 fail, 77 when io_uring is unavailable. */
#include "t_helpers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char MESSAGE[] = "hello from the C FFI test\n";

struct seen {
    int accepts;
    int closes;
    int accept_fd;
    char data[256];
    size_t len;
};

/* The seed's callbacks, recording instead of printing. */
static void on_accept(void *user_data, int fd)
{
    struct seen *s = user_data;
    s->accepts++;
    s->accept_fd = fd;
}

static void on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    struct seen *s = user_data;
    T_CHECK(fd == s->accept_fd);
    /* borrowed memory: copy what we keep */
    size_t room = sizeof s->data - s->len;
    size_t n = len < room ? len : room;
    memcpy(s->data + s->len, data, n);
    s->len += n;
}

static void on_close(void *user_data, int fd)
{
    struct seen *s = user_data;
    T_CHECK(fd == s->accept_fd);
    s->closes++;
}

struct client {
    uint16_t port;
    atomic_int done;
    int ok;
};

static void *client_main(void *arg)
{
    struct client *c = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
            send(fd, MESSAGE, sizeof MESSAGE - 1, 0) == (ssize_t)(sizeof MESSAGE - 1);
    if (fd >= 0)
        close(fd);
    atomic_store(&c->done, 1);
    return NULL;
}

int main(void)
{
    t_require_loop();
    printf("zero_copy_net %s (header %s)\n", zcn_version_string(), ZCN_VERSION_STRING);
    T_CHECK(zcn_version() == ZCN_VERSION_HEX);

    ZCN_Config config = {
        .address = "127.0.0.1",
        .port = 0, /* the seed used 9090; an ephemeral port cannot collide */
        .io_uring_entries = 256,
        .buffer_pool_size = 1024,
        .buffer_size = 4096,
    };
    ZCN_Error err = ZCN_OK;
    ZCN_Server *server = zcn_server_create(&config, &err);
    if (server == NULL) {
        fprintf(stderr, "zcn_server_create: %s: %s\n", zcn_error_name(err), zcn_error_detail());
        return err >= ZCN_ERR_URING_DISABLED && err <= ZCN_ERR_MEMLOCK ? T_EXIT_SKIP : T_EXIT_FAIL;
    }
    struct seen seen = {.accept_fd = -1};
    T_CHECK_ERR(zcn_server_set_callbacks(server, &seen, on_accept, on_data, on_close), ZCN_OK);
    T_CHECK_ERR(zcn_server_start(server), ZCN_OK);
    uint16_t port = zcn_server_port(server);
    T_CHECK(port != 0);
    printf("listening on 127.0.0.1:%u\n", port);

    struct client client = {.port = port};
    pthread_t th;
    T_CHECK(pthread_create(&th, NULL, client_main, &client) == 0);
    /* the seed's loop, bounded: run until the client has come and gone */
    for (int i = 0; i < 400 && seen.closes == 0; i++) {
        err = zcn_server_run_once_timeout(server, 25, NULL);
        T_CHECK(err == ZCN_OK || err == (ZCN_Error)EINTR);
    }
    pthread_join(th, NULL);
    T_CHECK(client.ok);

    printf("received: %.*s", (int)seen.len, seen.data);
    T_CHECK(seen.accepts == 1);
    T_CHECK(seen.closes == 1);
    T_CHECK(seen.len == sizeof MESSAGE - 1);
    T_CHECK(memcmp(seen.data, MESSAGE, seen.len) == 0);

    ZCN_ServerStats st;
    T_CHECK_ERR(zcn_server_stats(server, &st), ZCN_OK);
    T_CHECK(st.connections_accepted == 1);
    T_CHECK(st.connections_closed == 1);
    T_CHECK(st.connections_active == 0);
    T_CHECK(st.bytes_received == sizeof MESSAGE - 1);
    T_CHECK(st.buffers_in_use == 0);

    T_CHECK_ERR(zcn_server_destroy(server), ZCN_OK);
    printf("test_ffi: all passed\n");
    return T_EXIT_PASS;
}
