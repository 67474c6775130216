# Integration examples (included from examples/CMakeLists.txt).
#
# memory_pool_integration: server receive buffers parsed in place into
# message objects from a second zcn pool, measured, with allocator calls
# counted through --wrap (which is why it links the static library: the
# wrap then covers libzero_copy_net's own code as well).
add_executable(memory_pool_integration ${CMAKE_CURRENT_LIST_DIR}/memory_pool_integration.c)
target_compile_options(memory_pool_integration PRIVATE -Wall -Wextra)
target_link_libraries(memory_pool_integration PRIVATE zero_copy_net_static)
target_link_options(memory_pool_integration PRIVATE
  -Wl,--wrap=malloc -Wl,--wrap=calloc -Wl,--wrap=realloc -Wl,--wrap=free)
if(ZCN_BUILD_TESTS)
  # 200000 messages keep the test short; run it by hand without an argument
  # (1000000) for the figures quoted in docs.
  add_test(NAME memory_pool_integration COMMAND memory_pool_integration 200000)
  set_tests_properties(memory_pool_integration PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77)
endif()
