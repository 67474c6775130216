# UDP echo benchmark tool (servers + load generator); driven by
# bench/udp_bench.py. Included from bench/CMakeLists.txt.
add_executable(udp_bench ${CMAKE_CURRENT_LIST_DIR}/udp_bench.c)
target_compile_definitions(udp_bench PRIVATE _GNU_SOURCE)
target_compile_options(udp_bench PRIVATE -Wall -Wextra)
target_link_libraries(udp_bench PRIVATE zero_copy_net_static)
