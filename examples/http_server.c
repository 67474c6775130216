/* An HTTP/1.1 server answering every request with "Hello, world!", as in the
 * TechEmpower plaintext test: keep-alive, pipelining, Connection: close,
 * 400 for what it cannot parse. Compiled into the library as
 * zcn_demo_http_create (include/zero_copy_net.h has the contract);
 * examples/demo_server.c runs it, and so does `python -m zcn http`.
 *
 * The parser is a byte state machine kept per connection, so a request may
 * be split across receives at any byte: nothing is copied or buffered, the
 * bytes are read once where the kernel put them (the loop's pool buffer).
 * Only what the answer depends on is recognised: the version, the
 * Connection tokens, Content-Length (the body is skipped) and
 * Transfer-Encoding (refused: a chunked body is one this server cannot
 * skip without parsing it, and guessing would desynchronise the stream).
 * The answers to every request of one receive leave in one send. When that
 * send is refused for now (no free pool buffer), the answers and the rest
 * of the receive are held and finished from on_drain (demo_common.h). */
#include "demo_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HTTP_HEADER_MAX_DEFAULT 8192u
#define HTTP_BODY_MAX_DEFAULT (1u << 20)
/* A Content-Length above this is refused as malformed before the body
 * limit is even looked at (no overflow while accumulating digits). */
#define HTTP_LENGTH_DIGITS_MAX 1000000000000000000ull

enum {
    S_START,       /* before a request line (empty lines are skipped) */
    S_METHOD,
    S_TARGET,
    S_VERSION,     /* "HTTP/1." then a digit */
    S_LINE_END,    /* CR LF (or a bare LF) after the request line */
    S_LINE_LF,
    S_HEADER,      /* the start of a header line, or the empty line */
    S_NAME,
    S_VALUE,
    S_VALUE_LF,
    S_HEAD_LF,     /* the LF of the empty line that ends the head */
    S_BODY,        /* skipping body_left bytes */
    S_DONE,        /* answered for the last time: the rest is ignored */
};

enum {
    F_HTTP10 = 1u << 0,
    F_CLOSE = 1u << 1,
    F_KEEP_ALIVE = 1u << 2,
    F_LENGTH = 1u << 3,
    F_TRANSFER_ENCODING = 1u << 4,
};

/* The headers that change the answer, and Connection's tokens (lower case). */
enum { H_CONNECTION, H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_COUNT, H_OTHER = H_COUNT };
static const char *const header_names[H_COUNT] = {"connection", "content-length",
                                                  "transfer-encoding"};
enum { T_CLOSE, T_KEEP_ALIVE, T_COUNT };
static const char *const connection_tokens[T_COUNT] = {"close", "keep-alive"};

typedef struct HttpConn {
    uint8_t state;
    uint8_t flags;        /* F_* of the request being read */
    uint8_t header;       /* H_* whose value is being read */
    uint8_t match;        /* names or tokens still matching, a bit each */
    uint8_t pos;          /* bytes matched so far */
    uint8_t digits;       /* Content-Length: 0 none yet, 1 in digits, 2 after */
    uint32_t head_bytes;  /* of the request being read */
    uint64_t length;      /* Content-Length */
    uint64_t body_left;
} HttpConn;

enum { R_KEEP_ALIVE, R_KEEP_ALIVE_10, R_CLOSE, R_BAD, R_COUNT };

typedef struct HttpDemo {
    ZCN_Demo base;        /* first: a ZCN_Demo * is an HttpDemo * */
    uint32_t header_max;
    uint32_t body_max;
    uint64_t timer_id;
    time_t date_second;
    uint16_t answer_len[R_COUNT];
    char answer[R_COUNT][192];
} HttpDemo;

/* RFC 9110 tchar: the bytes of a method or a header name. */
static bool is_tchar(uint8_t c)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if ((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
        return true;
    return c != 0 && memchr(extra, c, sizeof extra - 1) != NULL;
}

/* One byte of a case-insensitive match against words: the bits of the
 * words that still match after it. */
static uint8_t match_byte(const char *const *words, unsigned count, uint8_t match, uint8_t pos,
                          uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        c |= 0x20;
    for (unsigned i = 0; i < count; i++)
        if ((match & (1u << i)) && (pos >= strlen(words[i]) || (uint8_t)words[i][pos] != c))
            match &= (uint8_t)~(1u << i);
    return match;
}

/* The word matched completely after pos bytes, or count. */
static unsigned match_end(const char *const *words, unsigned count, uint8_t match, uint8_t pos)
{
    for (unsigned i = 0; i < count; i++)
        if ((match & (1u << i)) && strlen(words[i]) == pos)
            return i;
    return count;
}

static void build_answers(HttpDemo *h, time_t now)
{
    static const char *const status[R_COUNT] = {"200 OK", "200 OK", "200 OK", "400 Bad Request"};
    static const char *const connection[R_COUNT] = {"", "Connection: keep-alive\r\n",
                                                    "Connection: close\r\n",
                                                    "Connection: close\r\n"};
    static const char *const body[R_COUNT] = {"Hello, world!", "Hello, world!",
                                              "Hello, world!", ""};
    char date[64];
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    for (int i = 0; i < R_COUNT; i++) {
        int n = snprintf(h->answer[i], sizeof h->answer[i],
                         "HTTP/1.1 %s\r\nServer: zcn\r\nDate: %s\r\n"
                         "Content-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
                         status[i], date, strlen(body[i]), connection[i], body[i]);
        h->answer_len[i] = (uint16_t)n;
    }
    h->date_second = now;
}

/* The Date header changes once a second: rebuilt by a timer, not per answer. */
static void on_tick(void *user_data, uint64_t timer_id)
{
    (void)timer_id;
    HttpDemo *h = user_data;
    time_t now = time(NULL);
    if (now != h->date_second)
        build_answers(h, now);
}

static void connection_token_end(HttpConn *c)
{
    unsigned t = match_end(connection_tokens, T_COUNT, c->match, c->pos);
    if (t == T_CLOSE)
        c->flags |= F_CLOSE;
    else if (t == T_KEEP_ALIVE)
        c->flags |= F_KEEP_ALIVE;
    c->match = (1u << T_COUNT) - 1;
    c->pos = 0;
}

/* One byte of a header value, for the headers that matter. false: malformed. */
static bool value_byte(HttpConn *c, uint8_t ch)
{
    if (c->header == H_CONTENT_LENGTH) {
        if (ch == ' ' || ch == '\t') {
            if (c->digits == 1)
                c->digits = 2;
            return true;
        }
        if (ch < '0' || ch > '9' || c->digits == 2 || c->length >= HTTP_LENGTH_DIGITS_MAX / 10)
            return false;
        c->digits = 1;
        c->length = c->length * 10 + (uint64_t)(ch - '0');
        return true;
    }
    /* H_CONNECTION: comma-separated tokens */
    if (ch == ',' || ch == ' ' || ch == '\t') {
        if (c->pos > 0)
            connection_token_end(c);
        return true;
    }
    if (c->match != 0 && c->pos < UINT8_MAX) {
        c->match = match_byte(connection_tokens, T_COUNT, c->match, c->pos, ch);
        c->pos++;
    } else {
        c->match = 0;
    }
    return true;
}

/* Where a header's value ends. false: malformed. */
static bool value_end(HttpConn *c)
{
    if (c->header == H_CONTENT_LENGTH)
        return c->digits != 0;
    if (c->header == H_CONNECTION && c->pos > 0)
        connection_token_end(c);
    return true;
}

enum { HEAD_MORE, HEAD_DONE, HEAD_BAD };

/* Reads the request head from *pp on: HEAD_DONE with *pp just after it,
 * HEAD_MORE with every byte consumed, or HEAD_BAD. */
static int parse_head(HttpConn *c, const uint8_t **pp, const uint8_t *end)
{
    const uint8_t *p = *pp;
    int result = HEAD_MORE;
    while (p < end) {
        uint8_t ch = *p;
        switch (c->state) {
        case S_START:
            if (ch == '\r' || ch == '\n') {
                p++;
                continue;
            }
            if (!is_tchar(ch))
                goto bad;
            c->state = S_METHOD;
            continue;
        case S_METHOD:
            while (p < end && is_tchar(*p))
                p++;
            if (p == end)
                goto more;
            if (*p++ != ' ')
                goto bad;
            c->state = S_TARGET;
            c->pos = 0;
            continue;
        case S_TARGET:
            while (p < end && *p > ' ' && *p != 0x7f) {
                p++;
                c->pos = 1;
            }
            if (p == end)
                goto more;
            if (*p++ != ' ' || c->pos == 0)
                goto bad;
            c->state = S_VERSION;
            c->pos = 0;
            continue;
        case S_VERSION:
            p++;
            if (c->pos < 7) {
                if (ch != (uint8_t)"HTTP/1."[c->pos++])
                    goto bad;
                continue;
            }
            if (ch < '0' || ch > '9')
                goto bad;
            if (ch == '0')
                c->flags |= F_HTTP10;
            c->state = S_LINE_END;
            continue;
        case S_LINE_END:
        case S_VALUE_LF:
            p++;
            if (ch == '\r' && c->state == S_LINE_END)
                c->state = S_LINE_LF;
            else if (ch == '\n')
                c->state = S_HEADER;
            else
                goto bad;
            continue;
        case S_LINE_LF:
            p++;
            if (ch != '\n')
                goto bad;
            c->state = S_HEADER;
            continue;
        case S_HEADER:
            if (ch == '\r') {
                p++;
                c->state = S_HEAD_LF;
                continue;
            }
            if (ch == '\n') {
                p++;
                goto done;
            }
            if (!is_tchar(ch))
                goto bad; /* obsolete line folding among others */
            c->state = S_NAME;
            c->match = (1u << H_COUNT) - 1;
            c->pos = 0;
            continue;
        case S_NAME:
            while (p < end && is_tchar(*p)) {
                if (c->match != 0 && c->pos < UINT8_MAX) {
                    c->match = match_byte(header_names, H_COUNT, c->match, c->pos, *p);
                    c->pos++;
                } else {
                    c->match = 0;
                }
                p++;
            }
            if (p == end)
                goto more;
            if (*p++ != ':')
                goto bad;
            c->header = (uint8_t)match_end(header_names, H_COUNT, c->match, c->pos);
            if (c->header == H_CONTENT_LENGTH) {
                if (c->flags & F_LENGTH)
                    goto bad; /* a second one: which body length is true? */
                c->flags |= F_LENGTH;
                c->length = 0;
                c->digits = 0;
            } else if (c->header == H_TRANSFER_ENCODING) {
                c->flags |= F_TRANSFER_ENCODING;
                c->header = H_OTHER;
            } else if (c->header == H_CONNECTION) {
                c->match = (1u << T_COUNT) - 1;
                c->pos = 0;
            }
            c->state = S_VALUE;
            continue;
        case S_VALUE:
            if (c->header == H_OTHER) {
                while (p < end && *p != '\r' && *p != '\n')
                    p++;
                if (p == end)
                    goto more;
                ch = *p;
            } else if (ch != '\r' && ch != '\n') {
                p++;
                if (!value_byte(c, ch))
                    goto bad;
                continue;
            }
            p++;
            if (!value_end(c))
                goto bad;
            c->state = ch == '\r' ? S_VALUE_LF : S_HEADER;
            continue;
        case S_HEAD_LF:
            p++;
            if (ch != '\n')
                goto bad;
            goto done;
        default:
            goto bad;
        }
    }
more:
    *pp = end;
    return result;
done:
    result = HEAD_DONE;
    *pp = p;
    return result;
bad:
    *pp = p;
    return HEAD_BAD;
}

/* The answer goes into the batch; false when the connection is done. */
static bool answer(HttpDemo *h, HttpConn *c, int kind)
{
    ZCN_Demo *d = &h->base;
    if (!demo_out(d, h->answer[kind], h->answer_len[kind])) {
        c->state = S_DONE;
        return false;
    }
    if (kind == R_BAD)
        d->stats.protocol_errors++;
    else
        d->stats.requests++;
    if (kind == R_KEEP_ALIVE || kind == R_KEEP_ALIVE_10)
        return true;
    c->state = S_DONE; /* the rest of what it sent is ignored */
    demo_close_after(d);
    return false;
}

static bool request_done(HttpDemo *h, HttpConn *c)
{
    if ((c->flags & F_TRANSFER_ENCODING) || c->length > h->body_max)
        return answer(h, c, R_BAD);
    int kind;
    if (c->flags & F_HTTP10)
        kind = (c->flags & (F_KEEP_ALIVE | F_CLOSE)) == F_KEEP_ALIVE ? R_KEEP_ALIVE_10 : R_CLOSE;
    else
        kind = (c->flags & F_CLOSE) ? R_CLOSE : R_KEEP_ALIVE;
    if (!answer(h, c, kind))
        return false;
    c->body_left = c->length;
    c->state = c->length ? S_BODY : S_START;
    c->flags = 0;
    c->length = 0;
    c->head_bytes = 0;
    return true;
}

static void http_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    HttpDemo *h = user_data;
    HttpConn *c = demo_conn(&h->base, fd);
    if (c == NULL || c->state == S_DONE)
        return;
    demo_out_begin(&h->base, fd);
    const uint8_t *p = data, *end = data + len;
    while (p < end) {
        if (c->state == S_BODY) {
            size_t n = (size_t)(end - p) < c->body_left ? (size_t)(end - p) : (size_t)c->body_left;
            p += n;
            c->body_left -= n;
            if (c->body_left == 0)
                c->state = S_START;
            continue;
        }
        const uint8_t *start = p;
        int r = parse_head(c, &p, end);
        if (c->state != S_START)
            c->head_bytes += (uint32_t)(p - start);
        if (r == HEAD_BAD || c->head_bytes > h->header_max) {
            answer(h, c, R_BAD);
            return;
        }
        if (r != HEAD_DONE)
            continue;
        if (!request_done(h, c))
            return;
        if (demo_holding(&h->base)) {
            /* Its answers wait for on_drain; the state is at a request
             * boundary, so the rest is parsed from here then. */
            demo_hold_input(&h->base, p, (size_t)(end - p));
            return;
        }
    }
    demo_flush(&h->base);
}

static void http_free(ZCN_Demo *d)
{
    HttpDemo *h = (HttpDemo *)d;
    if (h->timer_id != 0)
        zcn_loop_timer_cancel(d->loop, h->timer_id);
}

ZCN_Demo *zcn_demo_http_create(ZCN_Loop *loop, const ZCN_DemoConfig *config, ZCN_Error *err)
{
    ZCN_DemoConfig cfg = {0};
    if (config != NULL)
        cfg = *config;
    HttpDemo *h = calloc(1, sizeof *h);
    ZCN_Error e = ENOMEM;
    if (h == NULL)
        goto fail;
    h->header_max = cfg.header_max_bytes ? cfg.header_max_bytes : HTTP_HEADER_MAX_DEFAULT;
    h->body_max = cfg.body_max_bytes ? cfg.body_max_bytes : HTTP_BODY_MAX_DEFAULT;
    h->base.free_protocol = http_free;
    build_answers(h, time(NULL));
    e = demo_init(&h->base, loop, &cfg, sizeof(HttpConn), http_on_data);
    if (e != ZCN_OK)
        goto fail;
    e = zcn_loop_timer_start(loop, 250, 250, on_tick, h, &h->timer_id);
    if (e != ZCN_OK) {
        zcn_demo_destroy(&h->base);
        h = NULL;
        goto fail;
    }
    if (err != NULL)
        *err = ZCN_OK;
    return &h->base;
fail:
    free(h);
    if (err != NULL)
        *err = e;
    return NULL;
}
