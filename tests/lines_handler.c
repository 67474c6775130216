/* The "lines-c" handler of tests/_server_proc.py: answers every line with a
 * zero-copy slice of the received buffer holding the line without its
 * newline (a partial line at the end of a buffer as it stands), so the
 * slices of one buffer are not contiguous and a peer that floods short
 * lines queues many small slices.
 *
 * Built by the tests (cc -shared) and loaded with ctypes into the server
 * process, which hands it zcn_server_send's address: it links against
 * nothing, so it uses the very library the process loaded. A refused send
 * is counted (and the first one's reason kept) and its slice dropped.
 */
#include <zero_copy_net.h>

#include <stdio.h>
#include <string.h>

typedef ZCN_Error (*send_fn)(ZCN_Server *, int, const uint8_t *, size_t);
typedef const char *(*detail_fn)(void);

static send_fn server_send;
static detail_fn error_detail;
static uint64_t refused;
static char first_refusal[256];

/* zcn_server_send and zcn_error_detail of the library the process loaded. */
void lines_init(void *send, void *detail)
{
    server_send = (send_fn)send;
    error_detail = (detail_fn)detail;
}

uint64_t lines_refused(void)
{
    return refused;
}

/* Why the first refused send was refused (zcn_error_detail), or "". */
const char *lines_first_refusal(void)
{
    return first_refusal;
}

static void count_refusal(ZCN_Error err)
{
    if (refused++ == 0) {
        const char *name = err == ZCN_ERR_QUEUE_FULL ? "QUEUE_FULL" : "error";
        snprintf(first_refusal, sizeof first_refusal, "%s %d: %s", name, (int)err,
                 error_detail());
    }
}

/* A ZCN_OnData; user_data is the server. */
void lines_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    ZCN_Server *server = user_data;
    size_t start = 0;
    while (start < len) {
        const uint8_t *nl = memchr(data + start, '\n', len - start);
        size_t end = nl != NULL ? (size_t)(nl - data) : len;
        if (end > start) {
            ZCN_Error err = server_send(server, fd, data + start, end - start);
            if (err != ZCN_OK)
                count_refusal(err);
        }
        start = end + 1;
    }
}
