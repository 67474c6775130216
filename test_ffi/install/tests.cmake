# Packaging and header tests, included at the end of test_ffi/CMakeLists.txt.
#   zcn_header_c11      the header alone under -std=c11 -Wall -Wextra -Werror -pedantic
#   zcn_header_cxx      the header from C++11 (extern "C"), linked and run
#   zcn_version_static  version macros == zcn_version() == CMake/pyproject versions
#   zcn_version_shared  the same against the shared library
#   zcn_install         cmake --install + find_package / pkg-config / plain gcc line
#   zcn_c_api_doc       every header function has an entry in docs/C_API.md
set(ZCN_INSTALL_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})

add_test(NAME zcn_header_c11
  COMMAND ${CMAKE_C_COMPILER} -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only
          -I${PROJECT_SOURCE_DIR}/include ${ZCN_INSTALL_TEST_DIR}/header_c11.c)
set_tests_properties(zcn_header_c11 PROPERTIES TIMEOUT 60)

find_program(ZCN_CXX_COMPILER NAMES ${CMAKE_CXX_COMPILER} c++ g++ clang++)
find_program(ZCN_BASH bash)
# A sanitized static library needs the same sanitizer runtime at link time.
set(ZCN_CXX_LINK_FLAGS "")
if(ZCN_ASAN)
  set(ZCN_CXX_LINK_FLAGS "-fsanitize=address,undefined")
elseif(ZCN_TSAN)
  set(ZCN_CXX_LINK_FLAGS "-fsanitize=thread")
endif()
if(ZCN_CXX_COMPILER AND ZCN_BASH)
  add_test(NAME zcn_header_cxx
    COMMAND ${ZCN_BASH} ${ZCN_INSTALL_TEST_DIR}/check_cxx.sh ${ZCN_CXX_COMPILER}
            ${PROJECT_SOURCE_DIR}/include $<TARGET_FILE:zero_copy_net_static>
            ${CMAKE_CURRENT_BINARY_DIR}/header_cxx "${ZCN_CXX_LINK_FLAGS}")
  set_tests_properties(zcn_header_cxx PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77)
else()
  message(STATUS "zcn_header_cxx not registered: no C++ compiler or bash found")
endif()

file(STRINGS ${PROJECT_SOURCE_DIR}/pyproject.toml ZCN_PYPROJECT_VERSION_LINE
  REGEX "^version *= *\"[^\"]+\"" LIMIT_COUNT 1)
string(REGEX REPLACE "^version *= *\"([^\"]+)\".*" "\\1" ZCN_PYPROJECT_VERSION
  "${ZCN_PYPROJECT_VERSION_LINE}")
foreach(kind static shared)
  set(target zcn_version_${kind})
  add_executable(${target} ${ZCN_INSTALL_TEST_DIR}/version.c)
  target_compile_definitions(${target} PRIVATE
    ZCN_EXPECT_PROJECT_VERSION="${PROJECT_VERSION}"
    ZCN_EXPECT_PYPROJECT_VERSION="${ZCN_PYPROJECT_VERSION}")
  target_compile_options(${target} PRIVATE -Wall -Wextra)
  add_test(NAME ${target} COMMAND ${target})
  set_tests_properties(${target} PROPERTIES TIMEOUT 30)
endforeach()
target_link_libraries(zcn_version_static PRIVATE zero_copy_net_static)
target_link_libraries(zcn_version_shared PRIVATE zero_copy_net)

# Sanitizer builds install sanitized libraries that a plain consumer cannot
# link, so the install test runs in ordinary builds only.
if(ZCN_BASH AND NOT ZCN_ASAN AND NOT ZCN_TSAN)
  add_test(NAME zcn_install
    COMMAND ${ZCN_BASH} ${ZCN_INSTALL_TEST_DIR}/run_install_test.sh ${PROJECT_BINARY_DIR}
            ${CMAKE_C_COMPILER} ${PROJECT_VERSION})
  set_tests_properties(zcn_install PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
endif()

# docs/C_API.md documents every function the header declares.
if(ZCN_BASH)
  add_test(NAME zcn_c_api_doc
    COMMAND ${ZCN_BASH} ${ZCN_INSTALL_TEST_DIR}/check_api_doc.sh
            ${PROJECT_SOURCE_DIR}/include/zero_copy_net.h ${PROJECT_SOURCE_DIR}/docs/C_API.md)
  set_tests_properties(zcn_c_api_doc PROPERTIES TIMEOUT 30)
endif()
