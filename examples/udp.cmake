# UDP examples; included from examples/CMakeLists.txt.
add_executable(udp_echo ${CMAKE_CURRENT_LIST_DIR}/udp_echo.c)
target_compile_options(udp_echo PRIVATE -Wall -Wextra)
target_link_libraries(udp_echo PRIVATE zero_copy_net_static)

if(ZCN_BUILD_TESTS)
  add_test(NAME example_udp_echo
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run_udp_echo.sh $<TARGET_FILE:udp_echo>)
  set_tests_properties(example_udp_echo PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77)
endif()
