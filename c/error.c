/* Error codes, their names and the thread-local detail string. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

static _Thread_local char detail[256];

unsigned int zcn_version(void)
{
    return ZCN_VERSION_HEX;
}

const char *zcn_version_string(void)
{
    return ZCN_VERSION_STRING;
}

ZCN_Error zcn_fail(ZCN_Error err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return err;
}

void zcn_clear_detail(void)
{
    detail[0] = '\0';
}

const char *zcn_error_detail(void)
{
    return detail;
}

static const struct {
    ZCN_Error code;
    const char *name;
    const char *text;
} library_errors[] = {
    {ZCN_OK, "ZCN_OK", "success"},
    {ZCN_ERR_INVALID_ARGUMENT, "ZCN_ERR_INVALID_ARGUMENT", "invalid argument"},
    {ZCN_ERR_EXHAUSTED, "ZCN_ERR_EXHAUSTED", "resource exhausted (no free buffer or slot)"},
    {ZCN_ERR_DOUBLE_FREE, "ZCN_ERR_DOUBLE_FREE", "buffer released twice"},
    {ZCN_ERR_FOREIGN_POINTER, "ZCN_ERR_FOREIGN_POINTER", "pointer is not a buffer of this pool"},
    {ZCN_ERR_NOT_STARTED, "ZCN_ERR_NOT_STARTED", "server not started"},
    {ZCN_ERR_ALREADY_STARTED, "ZCN_ERR_ALREADY_STARTED", "server already started"},
    {ZCN_ERR_CLOSED, "ZCN_ERR_CLOSED", "not an open connection"},
    {ZCN_ERR_QUEUE_FULL, "ZCN_ERR_QUEUE_FULL", "send queue over its limit"},
    {ZCN_ERR_BUSY, "ZCN_ERR_BUSY", "not allowed from inside a callback"},
    {ZCN_ERR_URING_DISABLED, "ZCN_ERR_URING_DISABLED", "io_uring disabled by sysctl kernel.io_uring_disabled"},
    {ZCN_ERR_URING_BLOCKED, "ZCN_ERR_URING_BLOCKED", "io_uring blocked (seccomp filter or kernel.io_uring_group)"},
    {ZCN_ERR_URING_UNSUPPORTED, "ZCN_ERR_URING_UNSUPPORTED", "io_uring or a needed io_uring feature is not supported by this kernel"},
    {ZCN_ERR_MEMLOCK, "ZCN_ERR_MEMLOCK", "locked-memory limit (RLIMIT_MEMLOCK) too low"},
    {ZCN_ERR_TIMEOUT, "ZCN_ERR_TIMEOUT", "timed out"},
    {ZCN_ERR_WRONG_THREAD, "ZCN_ERR_WRONG_THREAD", "called from a thread that does not own the handle"},
};

const char *zcn_strerror(ZCN_Error err)
{
    int code = (int)err;
    if (code > 0 && code <= ZCN_ERRNO_MAX) {
        const char *text = strerrordesc_np(code);
        return text != NULL ? text : "unknown error";
    }
    for (size_t i = 0; i < sizeof library_errors / sizeof library_errors[0]; i++)
        if (library_errors[i].code == err)
            return library_errors[i].text;
    return "unknown error";
}

const char *zcn_error_name(ZCN_Error err)
{
    int code = (int)err;
    if (code > 0 && code <= ZCN_ERRNO_MAX) {
        const char *name = strerrorname_np(code);
        return name != NULL ? name : "EUNKNOWN";
    }
    for (size_t i = 0; i < sizeof library_errors / sizeof library_errors[0]; i++)
        if (library_errors[i].code == err)
            return library_errors[i].name;
    return "ZCN_ERR_UNKNOWN";
}

static int read_io_uring_disabled(void)
{
    FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "re");
    int value = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%d", &value) != 1)
        value = 0;
    fclose(f);
    return value;
}

ZCN_Error zcn_uring_setup_error(int neg_errno)
{
    int e = -neg_errno;
    struct rlimit rl;
    switch (e) {
    case ENOSYS:
        return zcn_fail(ZCN_ERR_URING_UNSUPPORTED,
                        "io_uring_setup: ENOSYS: this kernel has no io_uring (Linux >= 5.19 needed)");
    case EPERM: {
        int disabled = read_io_uring_disabled();
        if (disabled == 2)
            return zcn_fail(ZCN_ERR_URING_DISABLED,
                            "io_uring_setup: EPERM: io_uring disabled by sysctl kernel.io_uring_disabled=2");
        if (disabled == 1)
            return zcn_fail(ZCN_ERR_URING_BLOCKED,
                            "io_uring_setup: EPERM: kernel.io_uring_disabled=1 allows io_uring only to "
                            "CAP_SYS_ADMIN or the group in kernel.io_uring_group");
        return zcn_fail(ZCN_ERR_URING_BLOCKED,
                        "io_uring_setup: EPERM: blocked, most likely by a seccomp filter "
                        "(container runtime default profiles block io_uring)");
    }
    case ENOMEM:
        if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0)
            return zcn_fail(ZCN_ERR_MEMLOCK,
                            "io_uring_setup: ENOMEM: RLIMIT_MEMLOCK is %llu bytes; raise it "
                            "(ulimit -l) or use fewer ring entries",
                            (unsigned long long)rl.rlim_cur);
        return zcn_fail(ZCN_ERR_MEMLOCK, "io_uring_setup: ENOMEM");
    case EINVAL:
        return zcn_fail(ZCN_ERR_URING_UNSUPPORTED,
                        "io_uring_setup: EINVAL: the kernel rejected the ring parameters");
    default:
        return zcn_fail((ZCN_Error)e, "io_uring_setup: %s", strerrordesc_np(e) ? strerrordesc_np(e) : "error");
    }
}
