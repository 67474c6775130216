# The echo benchmark's C tools (driven by `python -m zcn bench`, see
# docs/PERFORMANCE.md): the load generator, the epoll baseline server and the
# zcn C-handler server. loadgen and epoll_echo do not use the library.
# Included from bench/CMakeLists.txt, and by the top CMakeLists.txt for the
# wheel (`pip install .`), which installs them into zcn/_bench.
foreach(tool loadgen epoll_echo)
  add_executable(${tool} ${CMAKE_CURRENT_LIST_DIR}/${tool}.c)
  target_compile_definitions(${tool} PRIVATE _GNU_SOURCE)
  target_compile_options(${tool} PRIVATE -Wall -Wextra)
endforeach()
add_executable(zcn_echo ${CMAKE_CURRENT_LIST_DIR}/zcn_echo.c)
target_compile_definitions(zcn_echo PRIVATE _GNU_SOURCE)
target_compile_options(zcn_echo PRIVATE -Wall -Wextra)
if(SKBUILD AND LIBURING_STATIC_LIBRARY)
  # In the wheel: no liburing needed at run time, as for the library itself
  # (the static library's interface would add -luring).
  target_sources(zcn_echo PRIVATE $<TARGET_OBJECTS:zcn_objects>)
  target_include_directories(zcn_echo PRIVATE ${PROJECT_SOURCE_DIR}/include)
  target_link_libraries(zcn_echo PRIVATE ${LIBURING_STATIC_LIBRARY} Threads::Threads)
else()
  target_link_libraries(zcn_echo PRIVATE zero_copy_net_static ${LIBURING_LINK_LIBRARIES}
                        Threads::Threads)
endif()
