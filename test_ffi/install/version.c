/* zcn_version test: the header's version macros, the library's runtime
 * version (static and shared builds, one executable each) and the versions
 * the build declares (CMake project(), pyproject.toml; passed in by
 * test_ffi/install/tests.cmake) must all agree. */
#include "zero_copy_net.h"

#include <stdio.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "version mismatch: %s\n", what);
        failures++;
    }
}

int main(void)
{
    char from_macros[32];
    snprintf(from_macros, sizeof from_macros, "%d.%d.%d", ZCN_VERSION_MAJOR, ZCN_VERSION_MINOR,
             ZCN_VERSION_PATCH);

    check(zcn_version() == ZCN_VERSION_HEX, "zcn_version() != ZCN_VERSION_HEX");
    check(strcmp(zcn_version_string(), ZCN_VERSION_STRING) == 0,
          "zcn_version_string() != ZCN_VERSION_STRING");
    check(strcmp(ZCN_VERSION_STRING, from_macros) == 0,
          "ZCN_VERSION_STRING != MAJOR.MINOR.PATCH");
    check(strcmp(ZCN_VERSION_STRING, ZCN_EXPECT_PROJECT_VERSION) == 0,
          "header != CMake project(VERSION)");
    check(strcmp(ZCN_VERSION_STRING, ZCN_EXPECT_PYPROJECT_VERSION) == 0,
          "header != pyproject.toml version");
    unsigned int v = zcn_version();
    printf("header %s (0x%06x), library %s (%u.%u.%u), CMake %s, pyproject %s\n",
           ZCN_VERSION_STRING, (unsigned)ZCN_VERSION_HEX, zcn_version_string(), v >> 16,
           (v >> 8) & 0xffu, v & 0xffu, ZCN_EXPECT_PROJECT_VERSION, ZCN_EXPECT_PYPROJECT_VERSION);
    return failures == 0 ? 0 : 1;
}
