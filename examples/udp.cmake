# UDP examples; included from examples/CMakeLists.txt.
add_executable(udp_echo ${CMAKE_CURRENT_LIST_DIR}/udp_echo.c)
target_compile_options(udp_echo PRIVATE -Wall -Wextra)
target_link_libraries(udp_echo PRIVATE zero_copy_net_static)
