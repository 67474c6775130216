// The public header from C++11 (-Wall -Wextra -Werror -pedantic), linked
// against the C library: a missing extern "C" shows up here as undefined,
// mangled symbols. Built and run by check_cxx.sh (zcn_header_cxx test).
#include "zero_copy_net.h"

#include <cstdio>
#include <cstring>

namespace {

struct Counter {
    int accepts;
};

extern "C" void on_accept(void *user_data, int fd)
{
    (void)fd;
    static_cast<Counter *>(user_data)->accepts++;
}

int fail(const char *what)
{
    std::fprintf(stderr, "header_cxx: %s failed: %s\n", what, zcn_error_detail());
    return 1;
}

} // namespace

int main()
{
    if (zcn_version() != static_cast<unsigned int>(ZCN_VERSION_HEX))
        return fail("zcn_version");
    if (std::strcmp(zcn_version_string(), ZCN_VERSION_STRING) != 0)
        return fail("zcn_version_string");
    if (std::strcmp(zcn_error_name(ZCN_ERR_EXHAUSTED), "ZCN_ERR_EXHAUSTED") != 0)
        return fail("zcn_error_name");

    ZCN_Error err = ZCN_OK;
    ZCN_BufferPool *pool = zcn_pool_create(4096, 2, &err);
    if (pool == nullptr)
        return fail("zcn_pool_create");
    void *buffer = zcn_pool_acquire(pool);
    if (buffer == nullptr || zcn_pool_release(pool, buffer) != ZCN_OK)
        return fail("acquire/release");
    if (zcn_pool_release(pool, buffer) != ZCN_ERR_DOUBLE_FREE)
        return fail("double free check");
    zcn_pool_destroy(pool);

    ZCN_Config config = {};
    config.address = "127.0.0.1";
    config.buffer_pool_size = 8;
    ZCN_Server *server = zcn_server_create(&config, &err);
    if (server == nullptr) {
        std::printf("header_cxx: no server here (%s), C++ linkage checked\n", zcn_error_name(err));
        return 0;
    }
    Counter counter = {0};
    // A captureless lambda converts to the C function pointer type too.
    ZCN_OnClose on_close = [](void *, int) {};
    if (zcn_server_set_callbacks(server, &counter, on_accept, nullptr, on_close) != ZCN_OK)
        return fail("zcn_server_set_callbacks");
    if (zcn_server_destroy(server) != ZCN_OK)
        return fail("zcn_server_destroy");
    std::printf("header_cxx: C++11 build and link against zero_copy_net %s ok\n",
                zcn_version_string());
    return 0;
}
