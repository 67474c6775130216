#include <zero_copy_net.h>

void on_data(void* user_data, int fd, const uint8_t* data, size_t len) {
    printf("Received: %.*s\n", (int)len, data);
}

int main() {
    ZCN_Config config = {
        .address = "127.0.0.1",
        .port = 9090,
        .io_uring_entries = 256,
        .buffer_pool_size = 1024,
        .buffer_size = 4096,
    };

    ZCN_Error err;
    ZCN_Server* server = zcn_server_create(&config, &err);
    zcn_server_set_callbacks(server, NULL, NULL, on_data, NULL);
    zcn_server_start(server);

    while (running) {
        zcn_server_run_once(server);
    }

    zcn_server_destroy(server);
}
