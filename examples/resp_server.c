/* An in-memory key/value store speaking RESP2 (the Redis protocol): PING,
 * ECHO, SET, GET, DEL, INCR, QUIT, and enough of COMMAND and CONFIG GET for
 * redis-cli and redis-benchmark. Compiled into the library as
 * zcn_demo_resp_create (include/zero_copy_net.h has the contract);
 * examples/demo_server.c runs it, and so does `python -m zcn resp`.
 *
 * Parsing. Requests are arrays of bulk strings ("*3\r\n$3\r\nSET\r\n...")
 * or inline lines ("PING\r\n"). Each connection keeps a small state machine
 * that walks the bytes where the kernel put them and hands every argument to
 * a sink as it goes: the command name to a 16-byte field, a key used in
 * place (copied to the connection's scratch only if the receive ends before
 * the command does), a SET value straight into the store (in one memcpy
 * when it is whole in this receive, else streamed into an entry reserved
 * for it and put in the table once complete, so no one ever sees half a
 * value). Nothing else is copied or allocated per command; the answers to
 * everything one receive carried leave in one send. When that send is
 * refused for now (no free pool buffer), the answers and the rest of the
 * receive are held and finished from on_drain (demo_common.h).
 *
 * Limits, all set at create: keys in the store, the memory it accounts
 * (keys, values and 16 bytes per entry), the length of one argument, the
 * number of arguments, the length of a key and of an inline line. Going
 * over a protocol limit (a length or count) is malformed input: an
 * "-ERR Protocol error" and a close, as Redis does. A full store answers
 * "-OOM" and keeps the connection. */
#include "demo_common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define RESP_KEYS_DEFAULT 1000000u
#define RESP_BULK_DEFAULT (512u * 1024u)
#define RESP_ARGS_DEFAULT 1024u
#define RESP_KEY_DEFAULT 512u
#define RESP_INLINE_DEFAULT 1024u
#define RESP_MEMORY_DEFAULT (256ull << 20)
#define RESP_KEYS_MAX (1u << 28)
/* Accounted per entry on top of its bytes (the allocator's header, the slot). */
#define ENTRY_OVERHEAD 16u
/* Room every value has, so that INCR rewrites it in place. */
#define VALUE_CAP_MIN 24u
/* Lengths and counts have at most this many digits (anything larger is
 * over every limit): no overflow while reading them. */
#define NUMBER_DIGITS_MAX 18u

/* ---- the store: open addressing, linear probing, load <= 1/2 ---------- */

typedef struct Entry {
    uint64_t hash;
    uint32_t key_len;
    uint32_t value_len;
    uint32_t value_cap;
    uint8_t data[];       /* the key, then value_cap bytes for the value */
} Entry;

typedef struct Store {
    Entry **slots;
    uint64_t mask;
    uint64_t seed;
    uint64_t count;
    uint64_t keys_max;
    uint64_t bytes;
    uint64_t bytes_max;
} Store;

static uint8_t *entry_value(Entry *e)
{
    return e->data + e->key_len;
}

static uint64_t entry_bytes(uint32_t key_len, uint32_t value_cap)
{
    return sizeof(Entry) + (uint64_t)key_len + value_cap + ENTRY_OVERHEAD;
}

static uint32_t value_cap_for(uint32_t len)
{
    uint32_t cap = (len + 7u) & ~7u;
    return cap < VALUE_CAP_MIN ? VALUE_CAP_MIN : cap;
}

/* FNV-1a with a per-store random seed, then a murmur3 finaliser. */
static uint64_t key_hash(const Store *s, const uint8_t *key, uint32_t len)
{
    uint64_t h = 0xcbf29ce484222325ull ^ s->seed;
    for (uint32_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* The slot holding key, or the empty slot where it would go. */
static uint64_t store_slot(const Store *s, const uint8_t *key, uint32_t len, uint64_t hash)
{
    uint64_t i = hash & s->mask;
    for (;;) {
        const Entry *e = s->slots[i];
        if (e == NULL ||
            (e->hash == hash && e->key_len == len && memcmp(e->data, key, len) == 0))
            return i;
        i = (i + 1) & s->mask;
    }
}

static Entry *store_get(const Store *s, const uint8_t *key, uint32_t len)
{
    return s->slots[store_slot(s, key, len, key_hash(s, key, len))];
}

/* Removes the entry in slot i, moving later entries of its probe run back
 * (no tombstones: lookups stay short however many deletes). */
static void store_remove_slot(Store *s, uint64_t i)
{
    Entry *e = s->slots[i];
    s->bytes -= entry_bytes(e->key_len, e->value_cap);
    s->count--;
    free(e);
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        Entry *next = s->slots[j];
        if (next == NULL)
            break;
        uint64_t home = next->hash & s->mask;
        bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            s->slots[i] = next;
            i = j;
        }
    }
    s->slots[i] = NULL;
}

static bool store_del(Store *s, const uint8_t *key, uint32_t len)
{
    uint64_t i = store_slot(s, key, len, key_hash(s, key, len));
    if (s->slots[i] == NULL)
        return false;
    store_remove_slot(s, i);
    return true;
}

/* A new entry for key with room for value_len bytes, counted against the
 * memory limit; NULL when the limit (or malloc) says no. */
static Entry *store_new_entry(Store *s, const uint8_t *key, uint32_t key_len, uint64_t hash,
                              uint32_t value_len)
{
    uint32_t cap = value_cap_for(value_len);
    uint64_t need = entry_bytes(key_len, cap);
    if (s->bytes + need > s->bytes_max)
        return NULL;
    Entry *e = malloc(sizeof(Entry) + (size_t)key_len + cap);
    if (e == NULL)
        return NULL;
    e->hash = hash;
    e->key_len = key_len;
    e->value_len = value_len;
    e->value_cap = cap;
    memcpy(e->data, key, key_len);
    s->bytes += need;
    return e;
}

static void store_drop_entry(Store *s, Entry *e)
{
    s->bytes -= entry_bytes(e->key_len, e->value_cap);
    free(e);
}

/* Puts a complete entry (from store_new_entry) in the table, replacing
 * the key's old one. false (and e freed) when the table is full. */
static bool store_put(Store *s, Entry *e)
{
    uint64_t i = store_slot(s, e->data, e->key_len, e->hash);
    Entry *old = s->slots[i];
    if (old != NULL) {
        store_drop_entry(s, old);
    } else if (s->count >= s->keys_max) {
        store_drop_entry(s, e);
        return false;
    } else {
        s->count++;
    }
    s->slots[i] = e;
    return true;
}

/* SET: in place when the old entry has room (no allocation). false: OOM. */
static bool store_set(Store *s, const uint8_t *key, uint32_t key_len, const uint8_t *value,
                      uint32_t value_len)
{
    uint64_t hash = key_hash(s, key, key_len);
    uint64_t i = store_slot(s, key, key_len, hash);
    Entry *e = s->slots[i];
    if (e != NULL && value_len <= e->value_cap) {
        memcpy(entry_value(e), value, value_len);
        e->value_len = value_len;
        return true;
    }
    if (e == NULL && s->count >= s->keys_max)
        return false;
    Entry *n = store_new_entry(s, key, key_len, hash, value_len);
    if (n == NULL)
        return false;
    memcpy(entry_value(n), value, value_len);
    if (e != NULL)
        store_drop_entry(s, e);
    else
        s->count++;
    s->slots[i] = n;
    return true;
}

/* ---- connections and the parser ------------------------------------- */

enum { /* parser states */
    P_TYPE,        /* the first byte of a request */
    P_NUMBER,      /* an array count or a bulk length */
    P_NUMBER_LF,
    P_BULK_TYPE,   /* '$' */
    P_BULK,        /* bulk_left bytes of an argument */
    P_BULK_CR,
    P_BULK_LF,
    P_INLINE,      /* an inline line, into scratch */
    P_DONE,        /* closing: the rest is ignored */
};

enum { N_ARRAY, N_BULK };

enum { /* where an argument's bytes go */
    K_SKIP,
    K_NAME,
    K_KEY_DIRECT,  /* whole in this receive: used in place */
    K_KEY_COPY,    /* into scratch */
    K_VALUE_DIRECT,
    K_VALUE_ENTRY, /* into the reserved entry */
    K_PARAM,
};

enum { C_UNKNOWN, C_PING, C_ECHO, C_SET, C_GET, C_DEL, C_INCR, C_QUIT, C_COMMAND, C_CONFIG };

enum { /* the reply a command gets instead of its own */
    E_NONE,
    E_UNKNOWN,
    E_ARITY,
    E_SYNTAX,
    E_KEY_TOO_LONG,
    E_OOM,
    E_NOT_INTEGER,
    E_OVERFLOW,
};

#define NAME_MAX_BYTES 16u
#define PARAM_MAX_BYTES 24u

typedef struct RespConn {
    uint8_t state;
    uint8_t number_kind;    /* N_* */
    uint8_t number_digits;
    uint8_t number_negative;
    uint8_t sink;           /* K_* of the current argument */
    uint8_t cmd;            /* C_* once the name is read */
    uint8_t error;          /* E_* */
    uint8_t key_in_scratch;
    uint8_t name_len;       /* bytes in name (the first NAME_MAX_BYTES) */
    uint8_t name_long;      /* longer than NAME_MAX_BYTES: no command */
    uint8_t param_len;
    uint32_t argc;
    uint32_t argi;
    uint32_t key_len;
    uint32_t inline_len;
    uint64_t number;
    uint64_t bulk_len;
    uint64_t bulk_left;
    int64_t deleted;
    const uint8_t *key;
    const uint8_t *value;   /* K_VALUE_DIRECT */
    Entry *entry;           /* K_VALUE_ENTRY */
    char name[NAME_MAX_BYTES];
    char param[PARAM_MAX_BYTES];
    uint8_t scratch[];      /* a key, or an inline line */
} RespConn;

typedef struct RespDemo {
    ZCN_Demo base;          /* first: a ZCN_Demo * is a RespDemo * */
    Store store;
    uint32_t bulk_max;
    uint32_t args_max;
    uint32_t key_max;
    uint32_t inline_max;
} RespDemo;

static void stats_sync(RespDemo *r)
{
    r->base.stats.keys = r->store.count;
    r->base.stats.memory_bytes = r->store.bytes;
}

/* ---- replies -------------------------------------------------------- */

static size_t format_i64(char *out, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    size_t len = 0;
    if (v < 0)
        out[len++] = '-';
    while (n > 0)
        out[len++] = tmp[--n];
    return len;
}

static bool reply(RespDemo *r, const char *text)
{
    return demo_out(&r->base, text, strlen(text));
}

/* ":n\r\n" or "$n\r\n": a type byte, a number, CRLF. */
static bool reply_number(RespDemo *r, char type, int64_t v)
{
    uint8_t *room = demo_out_room(&r->base, 24);
    if (room == NULL)
        return false;
    room[0] = (uint8_t)type;
    size_t n = 1 + format_i64((char *)room + 1, v);
    room[n++] = '\r';
    room[n++] = '\n';
    demo_out_used(&r->base, n);
    return true;
}

static bool reply_bulk(RespDemo *r, const uint8_t *bytes, size_t len)
{
    if (len + 32 <= DEMO_OUT_BYTES) { /* the usual case: one reservation */
        uint8_t *room = demo_out_room(&r->base, len + 32);
        if (room == NULL)
            return false;
        room[0] = '$';
        size_t n = 1 + format_i64((char *)room + 1, (int64_t)len);
        room[n++] = '\r';
        room[n++] = '\n';
        memcpy(room + n, bytes, len);
        n += len;
        room[n++] = '\r';
        room[n++] = '\n';
        demo_out_used(&r->base, n);
        return true;
    }
    return reply_number(r, '$', (int64_t)len) && demo_out(&r->base, bytes, len) &&
           demo_out(&r->base, "\r\n", 2);
}

/* A name as it may appear in an error reply: printable, bounded. */
static bool reply_error_name(RespDemo *r, const char *before, const RespConn *c,
                             const char *after)
{
    char name[NAME_MAX_BYTES + 1];
    size_t n = c->name_len;
    for (size_t i = 0; i < n; i++)
        name[i] = (c->name[i] > ' ' && c->name[i] < 0x7f) ? c->name[i] : '?';
    name[n] = '\0';
    return reply(r, before) && demo_out(&r->base, name, n) &&
           (c->name_long ? reply(r, "...") : true) && reply(r, after);
}

static bool reply_error(RespDemo *r, const RespConn *c)
{
    switch (c->error) {
    case E_UNKNOWN:
        return reply_error_name(r, "-ERR unknown command '", c, "'\r\n");
    case E_ARITY:
        return reply_error_name(r, "-ERR wrong number of arguments for '", c, "' command\r\n");
    case E_SYNTAX:
        return reply(r, "-ERR syntax error\r\n");
    case E_KEY_TOO_LONG:
        r->base.stats.limit_errors++;
        return reply(r, "-ERR key or message too long (over key_max_bytes)\r\n");
    case E_OOM:
        r->base.stats.limit_errors++;
        return reply(r, "-OOM command not allowed: the store is full (keys_max or "
                        "memory_max_bytes)\r\n");
    case E_NOT_INTEGER:
        return reply(r, "-ERR value is not an integer or out of range\r\n");
    default:
        return reply(r, "-ERR increment or decrement would overflow\r\n");
    }
}

/* ---- commands ------------------------------------------------------- */

static bool name_is(const RespConn *c, const char *lower)
{
    size_t n = strlen(lower);
    if (c->name_long || c->name_len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = c->name[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch | 0x20);
        if (ch != lower[i])
            return false;
    }
    return true;
}

static const struct {
    const char *name;
    uint8_t cmd;
    uint8_t argc_min;
    uint8_t argc_max;     /* 0: any */
} commands[] = {
    {"get", C_GET, 2, 2},        {"set", C_SET, 3, 3},     {"ping", C_PING, 1, 2},
    {"incr", C_INCR, 2, 2},      {"del", C_DEL, 2, 0},     {"echo", C_ECHO, 2, 2},
    {"quit", C_QUIT, 1, 0},      {"command", C_COMMAND, 1, 0},
    {"config", C_CONFIG, 2, 0},
};

/* The name is complete: which command, and does it have its arguments? */
static void command_known(RespConn *c)
{
    c->cmd = C_UNKNOWN;
    c->error = E_UNKNOWN;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!name_is(c, commands[i].name))
            continue;
        c->cmd = commands[i].cmd;
        if (c->argc < commands[i].argc_min)
            c->error = E_ARITY;
        else if (commands[i].argc_max != 0 && c->argc > commands[i].argc_max)
            c->error = c->cmd == C_SET ? E_SYNTAX : E_ARITY; /* SET's options */
        else
            c->error = E_NONE;
        return;
    }
}

static uint8_t sink_for(const RespConn *c)
{
    if (c->argi == 0)
        return K_NAME;
    if (c->error != E_NONE)
        return K_SKIP;
    switch (c->cmd) {
    case C_SET:
        return c->argi == 1 ? K_KEY_COPY : K_VALUE_ENTRY;
    case C_GET:
    case C_INCR:
    case C_DEL:
    case C_PING:
    case C_ECHO:
        return K_KEY_COPY;
    case C_CONFIG:
        return c->argi == 1 ? K_KEY_COPY : c->argi == 2 ? K_PARAM : K_SKIP;
    default:
        return K_SKIP;
    }
}

/* An argument of len bytes starts at p; whole: all of it (and its CRLF)
 * is in this receive, so pointers into it stay valid until it ends. */
static void arg_start(RespDemo *r, RespConn *c, uint64_t len, const uint8_t *p, bool whole)
{
    c->sink = sink_for(c);
    switch (c->sink) {
    case K_NAME:
        c->name_len = 0;
        c->name_long = len > NAME_MAX_BYTES;
        break;
    case K_KEY_COPY:
        if (len > r->key_max) {
            c->error = E_KEY_TOO_LONG;
            c->sink = K_SKIP;
        } else if (whole) {
            c->sink = K_KEY_DIRECT;
            c->key = p;
            c->key_len = (uint32_t)len;
            c->key_in_scratch = 0;
        } else {
            c->key = c->scratch;
            c->key_len = 0;
            c->key_in_scratch = 1;
        }
        break;
    case K_VALUE_ENTRY:
        if (whole) {
            c->sink = K_VALUE_DIRECT;
            c->value = p;
            break;
        }
        c->entry = store_new_entry(&r->store, c->key, c->key_len,
                                   key_hash(&r->store, c->key, c->key_len), (uint32_t)len);
        c->bulk_len = 0; /* bytes written into the entry */
        if (c->entry == NULL) {
            c->error = E_OOM;
            c->sink = K_SKIP;
        }
        break;
    case K_PARAM:
        c->param_len = len >= PARAM_MAX_BYTES ? PARAM_MAX_BYTES : 0;
        if (len >= PARAM_MAX_BYTES)
            c->sink = K_SKIP;
        break;
    default:
        break;
    }
}

static void arg_bytes(RespConn *c, const uint8_t *p, size_t n)
{
    switch (c->sink) {
    case K_NAME: {
        size_t room = NAME_MAX_BYTES - c->name_len;
        n = n < room ? n : room;
        memcpy(c->name + c->name_len, p, n);
        c->name_len = (uint8_t)(c->name_len + n);
        break;
    }
    case K_KEY_COPY:
        memcpy(c->scratch + c->key_len, p, n);
        c->key_len += (uint32_t)n;
        break;
    case K_VALUE_ENTRY:
        memcpy(entry_value(c->entry) + c->bulk_len, p, n);
        c->bulk_len += n;
        break;
    case K_PARAM:
        memcpy(c->param + c->param_len, p, n);
        c->param_len = (uint8_t)(c->param_len + n);
        break;
    default:
        break;
    }
}

/* An argument (len bytes) is complete. */
static void arg_end(RespDemo *r, RespConn *c, uint64_t len)
{
    if (c->argi == 0) {
        command_known(c);
    } else if (c->error == E_NONE && c->cmd == C_DEL) {
        c->deleted += store_del(&r->store, c->key, c->key_len);
        c->key = NULL;
    } else if (c->error == E_NONE && c->cmd == C_SET && c->argi == 2) {
        bool ok;
        if (c->sink == K_VALUE_DIRECT) {
            ok = store_set(&r->store, c->key, c->key_len, c->value, (uint32_t)len);
        } else {
            ok = store_put(&r->store, c->entry);
            c->entry = NULL;
        }
        if (!ok)
            c->error = E_OOM;
    }
    c->argi++;
}

static bool reply_config(RespDemo *r, RespConn *c)
{
    if (c->key_len != 3 || (c->key[0] | 0x20) != 'g' || (c->key[1] | 0x20) != 'e' ||
        (c->key[2] | 0x20) != 't')
        return reply(r, "-ERR unknown CONFIG subcommand (only CONFIG GET)\r\n");
    if (c->argc != 3)
        return reply(r, "*0\r\n");
    /* No persistence: what redis-benchmark reads at start. */
    if (c->param_len == 4 && strncasecmp(c->param, "save", 4) == 0)
        return reply(r, "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
    if (c->param_len == 10 && strncasecmp(c->param, "appendonly", 10) == 0)
        return reply(r, "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n");
    return reply(r, "*0\r\n");
}

/* Redis's rule: optional '-', digits, no leading zero, in int64 range. */
static bool parse_i64(const uint8_t *s, uint32_t len, int64_t *out)
{
    if (len == 0 || len > 20)
        return false;
    bool negative = s[0] == '-';
    uint32_t i = negative;
    if (i == len || (s[i] == '0' && len > i + 1) || (negative && s[i] == '0'))
        return false;
    uint64_t v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (negative ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return false;
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

static bool command_incr(RespDemo *r, RespConn *c)
{
    Entry *e = store_get(&r->store, c->key, c->key_len);
    if (e == NULL) {
        if (!store_set(&r->store, c->key, c->key_len, (const uint8_t *)"1", 1)) {
            c->error = E_OOM;
            return reply_error(r, c);
        }
        return reply(r, ":1\r\n");
    }
    int64_t v;
    if (!parse_i64(entry_value(e), e->value_len, &v)) {
        c->error = E_NOT_INTEGER;
        return reply_error(r, c);
    }
    if (v == INT64_MAX) {
        c->error = E_OVERFLOW;
        return reply_error(r, c);
    }
    v++;
    e->value_len = (uint32_t)format_i64((char *)entry_value(e), v); /* cap >= 24 */
    return reply_number(r, ':', v);
}

/* Every argument is in: the reply. false when the connection is done. */
static bool command_end(RespDemo *r, RespConn *c)
{
    bool ok;
    r->base.stats.requests++;
    if (c->error != E_NONE) {
        ok = reply_error(r, c);
    } else {
        switch (c->cmd) {
        case C_PING:
            ok = c->argc == 1 ? reply(r, "+PONG\r\n") : reply_bulk(r, c->key, c->key_len);
            break;
        case C_ECHO:
            ok = reply_bulk(r, c->key, c->key_len);
            break;
        case C_SET:
            ok = reply(r, "+OK\r\n");
            break;
        case C_GET: {
            Entry *e = store_get(&r->store, c->key, c->key_len);
            ok = e == NULL ? reply(r, "$-1\r\n") : reply_bulk(r, entry_value(e), e->value_len);
            break;
        }
        case C_DEL:
            ok = reply_number(r, ':', c->deleted);
            break;
        case C_INCR:
            ok = command_incr(r, c);
            break;
        case C_COMMAND:
            ok = reply(r, "*0\r\n");
            break;
        case C_CONFIG:
            ok = reply_config(r, c);
            break;
        default: /* C_QUIT */
            if (reply(r, "+OK\r\n"))
                demo_close_after(&r->base);
            ok = false;
            break;
        }
    }
    c->key = NULL;
    c->value = NULL;
    c->deleted = 0;
    c->error = E_NONE;
    c->state = ok ? P_TYPE : P_DONE;
    return ok;
}

/* Malformed input: the error, then a close once it is sent. */
static void protocol_error(RespDemo *r, RespConn *c, const char *why)
{
    r->base.stats.protocol_errors++;
    c->state = P_DONE;
    if (reply(r, "-ERR Protocol error: ") && reply(r, why) && reply(r, "\r\n"))
        demo_close_after(&r->base);
}

/* A complete inline line in scratch: split on blanks, run as arguments. */
static const char *run_inline(RespDemo *r, RespConn *c)
{
    uint8_t *s = c->scratch, *end = s + c->inline_len;
    if (end > s && end[-1] == '\r')
        end--;
    uint32_t argc = 0;
    for (uint8_t *p = s; p < end;) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            break;
        argc++;
        while (p < end && *p != ' ' && *p != '\t')
            p++;
    }
    if (argc > r->args_max)
        return "too many arguments";
    c->state = P_TYPE;
    if (argc == 0)
        return NULL;
    c->argc = argc;
    c->argi = 0;
    for (uint8_t *p = s; p < end;) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            break;
        uint8_t *word = p;
        while (p < end && *p != ' ' && *p != '\t')
            p++;
        size_t len = (size_t)(p - word);
        arg_start(r, c, len, word, true);
        arg_bytes(c, word, len);
        arg_end(r, c, len);
    }
    command_end(r, c);
    return NULL;
}

/* A length or count is complete: what it starts. NULL or the error. */
static const char *number_done(RespDemo *r, int fd, RespConn *c, const uint8_t *p,
                               const uint8_t *end)
{
    if (c->number_kind == N_ARRAY) {
        c->state = P_TYPE;
        if (c->number_negative)
            return c->number == 1 ? NULL : "invalid multibulk length"; /* *-1: null */
        if (c->number == 0)
            return NULL;
        if (c->number > r->args_max)
            return "invalid multibulk length";
        c->argc = (uint32_t)c->number;
        c->argi = 0;
        c->error = E_NONE;
        c->state = P_BULK_TYPE;
        return NULL;
    }
    if (c->number_negative || c->number > r->bulk_max)
        return "invalid bulk length";
    c->bulk_left = c->number;
    arg_start(r, c, c->number, p, (uint64_t)(end - p) >= c->number + 2);
    c->state = c->number ? P_BULK : P_BULK_CR;
    (void)fd;
    return NULL;
}

/* After a command: false when its answers (and those before it) are held
 * for on_drain, with the rest of the receive (the state is at a command
 * boundary, so parsing goes on from there then). */
static bool keep_going(RespDemo *r, const uint8_t *p, const uint8_t *end)
{
    if (!demo_holding(&r->base))
        return true;
    demo_hold_input(&r->base, p, (size_t)(end - p));
    return false;
}

static void resp_on_data(void *user_data, int fd, const uint8_t *data, size_t len)
{
    RespDemo *r = user_data;
    RespConn *c = demo_conn(&r->base, fd);
    if (c == NULL || c->state == P_DONE)
        return;
    demo_out_begin(&r->base, fd);
    const uint8_t *p = data, *end = data + len;
    const char *bad = NULL;
    while (p < end && bad == NULL) {
        uint8_t ch = *p;
        switch (c->state) {
        case P_TYPE:
            p++;
            if (ch == '*') {
                c->state = P_NUMBER;
                c->number_kind = N_ARRAY;
                c->number = 0;
                c->number_digits = 0;
                c->number_negative = 0;
            } else if (((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') || ch == ' ' || ch == '\t') {
                c->state = P_INLINE;
                c->scratch[0] = ch;
                c->inline_len = 1;
            } else if (ch != '\r' && ch != '\n') {
                bad = "unexpected type byte";
            }
            break;
        case P_NUMBER:
            p++;
            if (ch == '-' && c->number_digits == 0 && !c->number_negative) {
                c->number_negative = 1;
            } else if (ch >= '0' && ch <= '9' && c->number_digits < NUMBER_DIGITS_MAX) {
                c->number = c->number * 10 + (uint64_t)(ch - '0');
                c->number_digits++;
            } else if (ch == '\r' && c->number_digits > 0) {
                c->state = P_NUMBER_LF;
            } else {
                bad = c->number_kind == N_ARRAY ? "invalid multibulk length"
                                                : "invalid bulk length";
            }
            break;
        case P_NUMBER_LF:
            p++;
            bad = ch == '\n' ? number_done(r, fd, c, p, end) : "expected LF after a length";
            break;
        case P_BULK_TYPE:
            p++;
            if (ch != '$') {
                bad = "expected '$'";
                break;
            }
            c->state = P_NUMBER;
            c->number_kind = N_BULK;
            c->number = 0;
            c->number_digits = 0;
            c->number_negative = 0;
            break;
        case P_BULK: {
            size_t n = (size_t)(end - p) < c->bulk_left ? (size_t)(end - p)
                                                        : (size_t)c->bulk_left;
            arg_bytes(c, p, n);
            p += n;
            c->bulk_left -= n;
            if (c->bulk_left == 0)
                c->state = P_BULK_CR;
            break;
        }
        case P_BULK_CR:
            p++;
            if (ch != '\r')
                bad = "expected CRLF after a bulk string";
            else
                c->state = P_BULK_LF;
            break;
        case P_BULK_LF:
            p++;
            if (ch != '\n') {
                bad = "expected CRLF after a bulk string";
                break;
            }
            arg_end(r, c, c->number);
            if (c->argi < c->argc)
                c->state = P_BULK_TYPE;
            else if (!command_end(r, c) || !keep_going(r, p, end))
                goto out;
            break;
        case P_INLINE: {
            const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = (size_t)((nl ? nl : end) - p);
            if (c->inline_len + n > r->inline_max) {
                bad = "too big inline request";
                break;
            }
            memcpy(c->scratch + c->inline_len, p, n);
            c->inline_len += (uint32_t)n;
            p += n;
            if (nl != NULL) {
                p++;
                bad = run_inline(r, c);
                if (c->state == P_DONE || (bad == NULL && !keep_going(r, p, end)))
                    goto out;
            }
            break;
        }
        default: /* P_DONE */
            goto out;
        }
    }
    if (bad != NULL) {
        protocol_error(r, c, bad);
        goto out;
    }
    /* The receive ends inside a command whose key is still needed: the key
     * moves to scratch, the one copy a boundary costs. */
    if (c->key != NULL && !c->key_in_scratch) {
        memmove(c->scratch, c->key, c->key_len);
        c->key = c->scratch;
        c->key_in_scratch = 1;
    }
    demo_flush(&r->base);
out:
    stats_sync(r);
}

static void resp_conn_closed(ZCN_Demo *d, void *conn)
{
    RespDemo *r = (RespDemo *)d;
    RespConn *c = conn;
    if (c->entry != NULL) { /* a SET cut short */
        store_drop_entry(&r->store, c->entry);
        c->entry = NULL;
        stats_sync(r);
    }
}

static void resp_free(ZCN_Demo *d)
{
    RespDemo *r = (RespDemo *)d;
    Store *s = &r->store;
    if (s->slots != NULL)
        for (uint64_t i = 0; i <= s->mask; i++)
            free(s->slots[i]);
    free(s->slots);
    s->slots = NULL;
}

ZCN_Demo *zcn_demo_resp_create(ZCN_Loop *loop, const ZCN_DemoConfig *config, ZCN_Error *err)
{
    ZCN_DemoConfig cfg = {0};
    if (config != NULL)
        cfg = *config;
    ZCN_Error e = ZCN_ERR_INVALID_ARGUMENT;
    RespDemo *r = NULL;
    uint64_t keys = cfg.keys_max ? cfg.keys_max : RESP_KEYS_DEFAULT;
    if (keys > RESP_KEYS_MAX || cfg.args_max > (1u << 20) || cfg.key_max_bytes > (1u << 20) ||
        cfg.inline_max_bytes > (1u << 20))
        goto fail;
    e = ENOMEM;
    r = calloc(1, sizeof *r);
    if (r == NULL)
        goto fail;
    r->bulk_max = cfg.bulk_max_bytes ? cfg.bulk_max_bytes : RESP_BULK_DEFAULT;
    r->args_max = cfg.args_max ? cfg.args_max : RESP_ARGS_DEFAULT;
    r->key_max = cfg.key_max_bytes ? cfg.key_max_bytes : RESP_KEY_DEFAULT;
    r->inline_max = cfg.inline_max_bytes ? cfg.inline_max_bytes : RESP_INLINE_DEFAULT;
    r->store.keys_max = keys;
    r->store.bytes_max = cfg.memory_max_bytes ? cfg.memory_max_bytes : RESP_MEMORY_DEFAULT;
    uint64_t slots = 16;
    while (slots < 2 * keys)
        slots *= 2;
    r->store.mask = slots - 1;
    r->store.slots = calloc(slots, sizeof *r->store.slots);
    if (r->store.slots == NULL)
        goto fail;
    if (getrandom(&r->store.seed, sizeof r->store.seed, GRND_NONBLOCK) != sizeof r->store.seed)
        r->store.seed = (uint64_t)(uintptr_t)r; /* any value works; random resists flooding */
    r->base.conn_closed = resp_conn_closed;
    r->base.free_protocol = resp_free;
    size_t scratch = r->key_max > r->inline_max ? r->key_max : r->inline_max;
    e = demo_init(&r->base, loop, &cfg, sizeof(RespConn) + scratch, resp_on_data);
    if (e != ZCN_OK)
        goto fail;
    if (err != NULL)
        *err = ZCN_OK;
    return &r->base;
fail:
    if (r != NULL)
        resp_free(&r->base);
    free(r);
    if (err != NULL)
        *err = e;
    return NULL;
}
