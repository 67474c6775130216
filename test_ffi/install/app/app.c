/* A consumer of an installed libzero_copy_net: the seed's "C Integration
 * Example" cut down to what proves the link works. Built by
 * run_install_test.sh three ways (find_package, pkg-config, the seed's gcc
 * line). Exit 0 = linked and ran; io_uring being unavailable is not a failure
 * here (the point is the link), it is only reported. */
#include <zero_copy_net.h>

#include <stdio.h>
#include <string.h>

static void on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    (void)user_data;
    (void)fd;
    printf("Received: %.*s\n", (int)len, (const char *)data);
}

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "app";
    if (zcn_version() != ZCN_VERSION_HEX || strcmp(zcn_version_string(), ZCN_VERSION_STRING) != 0) {
        fprintf(stderr, "%s: header %s but library %s\n", how, ZCN_VERSION_STRING,
                zcn_version_string());
        return 1;
    }

    ZCN_Error err = ZCN_OK;
    ZCN_BufferPool *pool = zcn_pool_create(4096, 4, &err);
    if (pool == NULL) {
        fprintf(stderr, "%s: zcn_pool_create: %s\n", how, zcn_error_name(err));
        return 1;
    }
    void *buffer = zcn_pool_acquire(pool);
    if (buffer == NULL || zcn_pool_release(pool, buffer) != ZCN_OK) {
        fprintf(stderr, "%s: pool acquire/release failed\n", how);
        return 1;
    }
    zcn_pool_destroy(pool);

    ZCN_Config config = {0};
    config.address = "127.0.0.1";
    config.io_uring_entries = 64;
    config.buffer_pool_size = 16;
    config.buffer_size = 4096;
    ZCN_Server *server = zcn_server_create(&config, &err);
    if (server == NULL) {
        printf("%s: linked against zero_copy_net %s; no server here: %s (%s)\n", how,
               zcn_version_string(), zcn_error_name(err), zcn_error_detail());
        return 0;
    }
    if (zcn_server_set_callbacks(server, NULL, NULL, on_data, NULL) != ZCN_OK ||
        zcn_server_start(server) != ZCN_OK ||
        zcn_server_run_once_timeout(server, 0, NULL) != ZCN_OK) {
        fprintf(stderr, "%s: server start failed: %s\n", how, zcn_error_detail());
        zcn_server_destroy(server);
        return 1;
    }
    printf("%s: linked against zero_copy_net %s; server listened on port %u\n", how,
           zcn_version_string(), (unsigned)zcn_server_port(server));
    return zcn_server_destroy(server) == ZCN_OK ? 0 : 1;
}
