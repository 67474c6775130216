/* A group: one loop per thread, one SO_REUSEPORT listener on each.
 *
 * Each thread pins itself (when asked), then creates its own loop and
 * listener, so the loop's ring, pool and connection table are first
 * touched on its own CPU. Listeners are created one after the other so
 * that listener i is socket i of the kernel's reuseport group (what the
 * steering program returns). The threads then wait for zcn_group_start,
 * run their loops until a stop, and tear them down themselves: on_close
 * of the connections left runs on the loop's own thread.
 *
 * Nothing here is on the per-message path: the loops never look at the
 * group while they run. The mutex orders the phases (created, started,
 * ended) and guards the final stats of the loops already destroyed. */

#include "internal.h"
#include "loop.h"

#include <errno.h>
#include <linux/filter.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define KNOWN_GROUP_FLAGS ((uint32_t)(ZCN_GROUP_PIN | ZCN_GROUP_STEER_CPU))
#define DETAIL_MAX 256
/* How often a thread waiting for start looks at the (signal-safe) stop flag. */
#define GO_POLL_MS 50

enum go_state { GO_WAIT, GO_RUN, GO_CANCEL };

struct member {
    ZCN_Group *g;
    uint32_t index;
    int cpu;                    /* -1: not pinned */
    pthread_t tid;
    bool joinable;
    _Atomic(ZCN_Loop *) loop;   /* NULL once its thread destroyed it */
    _Atomic(ZCN_Server *) server;
    /* under g->mu */
    bool created;               /* the create step is over (ok or not) */
    bool start_done;            /* accepting, or gave up */
    bool ended;
    bool running;
    bool final_valid;
    ZCN_LoopStats final;        /* its stats when its loop was destroyed */
    ZCN_LoopStats snap;         /* the latest its thread published */
    uint64_t snap_gen;          /* snapshots published */
    bool snap_asked;            /* a publish call is queued on it */
    ZCN_Error error;            /* the create, start or run error */
    char detail[DETAIL_MAX];
};

struct ZCN_Group {
    uint32_t n;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* any phase change (CLOCK_MONOTONIC) */
    enum go_state go;           /* under mu */
    bool start_called;          /* under mu */
    uint32_t ended;             /* under mu */
    uint32_t loop_errors;       /* under mu */
    ZCN_Error first_error;      /* under mu: the first a loop ended with */
    _Atomic int stopping;
    int live_slot;
    bool echo;
    void *user_data;
    ZCN_OnLoopStart on_start;
    ZCN_OnLoopStop on_stop;
    ZCN_LoopConfig loop_cfg;
    ZCN_Config listen_cfg;
    char address[64];
    uint16_t port;
    struct member *m;
};

/* The group member the calling thread is (NULL on other threads). */
static _Thread_local struct member *current_member;

/* ------------------------------------------------------------------ */
/* helpers                                                             */
/* ------------------------------------------------------------------ */

static void record(struct member *t, ZCN_Error e, const char *what)
{
    t->error = e;
    snprintf(t->detail, sizeof t->detail, "loop %u: %s: %s", t->index, what,
             zcn_error_detail()[0] ? zcn_error_detail() : zcn_strerror(e));
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Signal-safe: atomics and each loop's (registry-checked) stop. */
static void request_stop(ZCN_Group *g)
{
    atomic_store(&g->stopping, 1);
    for (uint32_t i = 0; i < g->n; i++) {
        ZCN_Loop *l = atomic_load(&g->m[i].loop);
        if (l != NULL)
            zcn_loop_stop(l);
    }
}

static bool on_group_thread(const ZCN_Group *g)
{
    return current_member != NULL && current_member->g == g;
}

/* The reuseport program: the CPU that runs it (the one that took the SYN
 * from the network) picks the listener pinned there; any other CPU
 * returns an index past the group, which makes the kernel fall back to
 * its hash. Two instructions per loop: jeq cpu_i; ret i. */
static ZCN_Error attach_steering(ZCN_Group *g, int fd)
{
    uint32_t len = 2 * g->n + 2;
    struct sock_filter *code = calloc(len, sizeof *code);
    if (code == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "steering program");
    uint32_t k = 0;
    code[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                             (uint32_t)(SKF_AD_OFF + SKF_AD_CPU));
    for (uint32_t i = 0; i < g->n; i++) {
        code[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                                 (uint32_t)g->m[i].cpu, 0, 1);
        code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, i);
    }
    code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0xffffffffu);
    struct sock_fprog prog = {.len = (unsigned short)k, .filter = code};
    int rc = setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog);
    int e = errno;
    free(code);
    if (rc != 0)
        return zcn_fail((ZCN_Error)e, "SO_ATTACH_REUSEPORT_CBPF: %s", strerror(e));
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* the thread of one loop                                              */
/* ------------------------------------------------------------------ */

static ZCN_Error create_step(struct member *t)
{
    ZCN_Group *g = t->g;
    if (t->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(t->cpu, &set);
        int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
        if (rc != 0)
            return zcn_fail((ZCN_Error)rc, "pinning to CPU %d: %s", t->cpu, strerror(rc));
    }
    ZCN_Error e = ZCN_OK;
    ZCN_Loop *loop = zcn_loop_create(&g->loop_cfg, &e);
    if (loop == NULL)
        return e;
    ZCN_Config lc = g->listen_cfg;
    lc.address = g->address[0] ? g->address : NULL;
    lc.flags |= ZCN_SERVER_REUSEPORT;
    if (t->index > 0)
        lc.port = g->port; /* port 0: join the port the first one picked */
    ZCN_Server *srv = zcn_server_create_on(loop, &lc, &e);
    if (srv == NULL) {
        zcn_loop_destroy(loop);
        return e;
    }
    atomic_store(&t->server, srv);
    atomic_store(&t->loop, loop); /* seq_cst: a stop either sees it or we see the stop */
    return ZCN_OK;
}

static void teardown(struct member *t, bool started)
{
    ZCN_Group *g = t->g;
    ZCN_Loop *loop = atomic_load(&t->loop);
    if (loop == NULL)
        return;
    if (started && g->on_stop != NULL)
        g->on_stop(g->user_data, t->index, loop, atomic_load(&t->server));
    ZCN_Error e = zcn_loop_teardown(loop);
    if (e != ZCN_OK) { /* a UDP socket left on it: the loop cannot go */
        pthread_mutex_lock(&g->mu);
        if (t->error == ZCN_OK)
            record(t, e, "destroying the loop");
        pthread_mutex_unlock(&g->mu);
        /* Leak the loop rather than free memory the kernel may still use;
         * its stats stay readable. */
        return;
    }
    pthread_mutex_lock(&g->mu);
    zcn_loop_stats(loop, &t->final);
    t->final_valid = true;
    atomic_store(&t->loop, NULL);
    atomic_store(&t->server, NULL);
    pthread_mutex_unlock(&g->mu);
    zcn_loop_free(loop);
}

static void *member_main(void *arg)
{
    struct member *t = arg;
    ZCN_Group *g = t->g;
    current_member = t;

    ZCN_Error e = create_step(t);
    pthread_mutex_lock(&g->mu);
    if (e != ZCN_OK)
        record(t, e, "create");
    else if (t->index == 0)
        g->port = zcn_server_port(atomic_load(&t->server));
    t->created = true;
    pthread_cond_broadcast(&g->cv);
    /* Wait for start (or a cancel); a signal-safe stop only sets a flag. */
    while (g->go == GO_WAIT && !atomic_load(&g->stopping)) {
        struct timespec ts;
        deadline_after(&ts, GO_POLL_MS);
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    }
    bool run = g->go == GO_RUN && t->error == ZCN_OK && !atomic_load(&g->stopping);
    pthread_mutex_unlock(&g->mu);

    bool started = false;
    if (run) {
        ZCN_Loop *loop = atomic_load(&t->loop);
        ZCN_Server *srv = atomic_load(&t->server);
        const char *what = "zcn_server_use_echo_handler";
        e = g->echo ? zcn_server_use_echo_handler(srv) : ZCN_OK;
        if (e == ZCN_OK && g->on_start != NULL) {
            what = "on_start";
            zcn_clear_detail();
            e = g->on_start(g->user_data, t->index, loop, srv);
        }
        started = true; /* on_stop pairs with on_start, even a failed one */
        if (e == ZCN_OK) {
            what = "zcn_server_start";
            e = zcn_server_start(srv);
        }
        pthread_mutex_lock(&g->mu);
        if (e != ZCN_OK)
            record(t, e, what);
        else
            t->running = true;
        t->start_done = true;
        pthread_cond_broadcast(&g->cv);
        pthread_mutex_unlock(&g->mu);
        if (e != ZCN_OK) {
            request_stop(g);
        } else if (!atomic_load(&g->stopping)) {
            e = zcn_loop_run(loop); /* a stop from now on is kept for it */
            if (e != ZCN_OK) {
                pthread_mutex_lock(&g->mu);
                record(t, e, "zcn_loop_run");
                pthread_mutex_unlock(&g->mu);
                request_stop(g); /* one loop failing ends the group */
            }
        }
    }
    teardown(t, started);

    pthread_mutex_lock(&g->mu);
    t->running = false;
    t->start_done = true;
    t->ended = true;
    g->ended++;
    if (t->error != ZCN_OK && started) {
        g->loop_errors++;
        if (g->first_error == ZCN_OK)
            g->first_error = t->error;
    }
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* create, start, stop, wait, destroy                                  */
/* ------------------------------------------------------------------ */

static ZCN_Error check_config(const ZCN_GroupConfig *cfg, cpu_set_t *allowed, uint32_t *n_out)
{
    if (cfg->flags & ~KNOWN_GROUP_FLAGS)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "flags: unknown bits 0x%x",
                        cfg->flags & ~KNOWN_GROUP_FLAGS);
    CPU_ZERO(allowed);
    if (sched_getaffinity(0, sizeof *allowed, allowed) != 0)
        return zcn_fail((ZCN_Error)errno, "sched_getaffinity: %s", strerror(errno));
    uint32_t n = cfg->threads ? cfg->threads : (uint32_t)CPU_COUNT(allowed);
    if (n == 0)
        n = 1;
    if (n > ZCN_GROUP_THREADS_MAX)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "threads: %u is over %u", n,
                        ZCN_GROUP_THREADS_MAX);
    if (cfg->cpus != NULL) {
        if (cfg->threads == 0)
            return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                            "threads: must be given with cpus (its length)");
        for (uint32_t i = 0; i < n; i++) {
            int c = cfg->cpus[i];
            if (c < 0 || c >= CPU_SETSIZE || !CPU_ISSET(c, allowed))
                return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                                "cpus[%u]: CPU %d is not one this process may run on", i, c);
        }
    }
    bool pinned = cfg->cpus != NULL || (cfg->flags & ZCN_GROUP_PIN);
    if ((cfg->flags & ZCN_GROUP_STEER_CPU) && !pinned)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "flags: ZCN_GROUP_STEER_CPU needs pinned loops (cpus or ZCN_GROUP_PIN)");
    if (cfg->loop.buffer_memory != NULL || cfg->loop.buffer_memory_size != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT,
                        "loop.buffer_memory: must be NULL (each loop maps its own)");
    if (cfg->listen.address != NULL && strlen(cfg->listen.address) >= 64)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "listen.address: too long for an address");
    *n_out = n;
    return ZCN_OK;
}

static void join_all(ZCN_Group *g)
{
    for (uint32_t i = 0; i < g->n; i++)
        if (g->m[i].joinable) {
            pthread_join(g->m[i].tid, NULL);
            g->m[i].joinable = false;
        }
}

static void free_group(ZCN_Group *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->m);
    free(g);
}

/* Ends the threads (started or not) and frees everything. */
static void cancel_and_free(ZCN_Group *g)
{
    pthread_mutex_lock(&g->mu);
    if (g->go == GO_WAIT)
        g->go = GO_CANCEL;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    request_stop(g);
    join_all(g);
    free_group(g);
}

ZCN_Group *zcn_group_create(const ZCN_GroupConfig *cfg, ZCN_Error *err)
{
    zcn_clear_detail();
    if (cfg == NULL) {
        zcn_set_err(err, zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "config is NULL"));
        return NULL;
    }
    cpu_set_t allowed;
    uint32_t n = 0;
    ZCN_Error e = check_config(cfg, &allowed, &n);
    if (e != ZCN_OK) {
        zcn_set_err(err, e);
        return NULL;
    }
    ZCN_Group *g = calloc(1, sizeof *g);
    struct member *m = calloc(n, sizeof *m);
    pthread_condattr_t ca;
    bool sync_ok = false;
    if (g != NULL && m != NULL && pthread_condattr_init(&ca) == 0) {
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        if (pthread_mutex_init(&g->mu, NULL) == 0) {
            if (pthread_cond_init(&g->cv, &ca) == 0)
                sync_ok = true;
            else
                pthread_mutex_destroy(&g->mu);
        }
        pthread_condattr_destroy(&ca);
    }
    if (!sync_ok) {
        free(g);
        free(m);
        zcn_set_err(err, zcn_fail((ZCN_Error)ENOMEM, "group"));
        return NULL;
    }
    g->n = n;
    g->m = m;
    g->live_slot = -1;
    atomic_init(&g->stopping, 0);
    g->loop_cfg = cfg->loop;
    g->listen_cfg = cfg->listen;
    if (cfg->listen.address != NULL)
        snprintf(g->address, sizeof g->address, "%s", cfg->listen.address);
    g->listen_cfg.address = NULL;
    int cpus_allowed[CPU_SETSIZE];
    int n_allowed = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &allowed))
            cpus_allowed[n_allowed++] = c;
    for (uint32_t i = 0; i < n; i++) {
        m[i].g = g;
        m[i].index = i;
        m[i].cpu = -1;
        if (cfg->cpus != NULL)
            m[i].cpu = cfg->cpus[i];
        else if ((cfg->flags & ZCN_GROUP_PIN) && n_allowed > 0)
            m[i].cpu = cpus_allowed[i % (uint32_t)n_allowed];
        atomic_init(&m[i].loop, NULL);
        atomic_init(&m[i].server, NULL);
    }

    /* The threads block every signal: they go to the application's own. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (uint32_t i = 0; i < n && e == ZCN_OK; i++) {
        int rc = pthread_create(&m[i].tid, NULL, member_main, &m[i]);
        if (rc != 0) {
            e = zcn_fail((ZCN_Error)rc, "pthread_create for loop %u: %s", i, strerror(rc));
            break;
        }
        m[i].joinable = true;
        /* One after the other: listener i is socket i of the reuseport group. */
        pthread_mutex_lock(&g->mu);
        while (!m[i].created)
            pthread_cond_wait(&g->cv, &g->mu);
        e = m[i].error;
        char detail[DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", m[i].detail);
        pthread_mutex_unlock(&g->mu);
        if (e != ZCN_OK)
            e = zcn_fail(e, "%s", detail);
        else if (i == 0 && (cfg->flags & ZCN_GROUP_STEER_CPU))
            e = attach_steering(g, zcn_server_listen_fd(atomic_load(&m[0].server)));
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e == ZCN_OK) {
        g->live_slot = zcn_live_add(g);
        if (g->live_slot < 0)
            e = zcn_fail(ZCN_ERR_EXHAUSTED, "too many live handles");
    }
    if (e != ZCN_OK) {
        char detail[DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", zcn_error_detail());
        if (g->live_slot >= 0)
            zcn_live_remove(g->live_slot);
        cancel_and_free(g);
        zcn_fail(e, "%s", detail); /* the teardown may have set another */
        zcn_set_err(err, e);
        return NULL;
    }
    zcn_set_err(err, ZCN_OK);
    return g;
}

static ZCN_Error guard(const ZCN_Group *g, const char *fn)
{
    if (g == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "%s: group is NULL", fn);
    if (on_group_thread(g))
        return zcn_fail(ZCN_ERR_WRONG_THREAD, "%s: not from one of the group's own threads",
                        fn);
    return ZCN_OK;
}

ZCN_Error zcn_group_set_hooks(ZCN_Group *g, void *user_data, ZCN_OnLoopStart on_start,
                              ZCN_OnLoopStop on_stop)
{
    ZCN_Error e = guard(g, "zcn_group_set_hooks");
    if (e != ZCN_OK)
        return e;
    pthread_mutex_lock(&g->mu);
    if (g->start_called) {
        pthread_mutex_unlock(&g->mu);
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "hooks are set before zcn_group_start");
    }
    g->user_data = user_data;
    g->on_start = on_start;
    g->on_stop = on_stop;
    pthread_mutex_unlock(&g->mu);
    return ZCN_OK;
}

ZCN_Error zcn_group_use_echo_handler(ZCN_Group *g)
{
    ZCN_Error e = guard(g, "zcn_group_use_echo_handler");
    if (e != ZCN_OK)
        return e;
    pthread_mutex_lock(&g->mu);
    if (g->start_called) {
        pthread_mutex_unlock(&g->mu);
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "the handler is set before zcn_group_start");
    }
    g->echo = true;
    pthread_mutex_unlock(&g->mu);
    return ZCN_OK;
}

ZCN_Error zcn_group_start(ZCN_Group *g)
{
    ZCN_Error e = guard(g, "zcn_group_start");
    if (e != ZCN_OK)
        return e;
    pthread_mutex_lock(&g->mu);
    if (g->start_called) {
        pthread_mutex_unlock(&g->mu);
        return zcn_fail(ZCN_ERR_ALREADY_STARTED, "a group runs once");
    }
    g->start_called = true;
    g->go = GO_RUN;
    pthread_cond_broadcast(&g->cv);
    for (uint32_t i = 0; i < g->n; i++)
        while (!g->m[i].start_done && !g->m[i].ended)
            pthread_cond_wait(&g->cv, &g->mu);
    char detail[DETAIL_MAX] = "";
    for (uint32_t i = 0; i < g->n && e == ZCN_OK; i++)
        if (g->m[i].error != ZCN_OK) {
            e = g->m[i].error;
            snprintf(detail, sizeof detail, "%s", g->m[i].detail);
        }
    bool stopped = atomic_load(&g->stopping);
    pthread_mutex_unlock(&g->mu);
    if (e != ZCN_OK)
        return zcn_fail(e, "%s", detail);
    if (stopped)
        return zcn_fail(ZCN_ERR_CLOSED, "the group was stopped while it started");
    return ZCN_OK;
}

ZCN_Error zcn_group_stop(ZCN_Group *g)
{
    int slot = zcn_live_acquire(g);
    if (slot == -1)
        return ZCN_ERR_INVALID_ARGUMENT; /* no detail: must stay signal-safe */
    request_stop(g);
    zcn_live_release(slot);
    return ZCN_OK;
}

ZCN_Error zcn_group_wait(ZCN_Group *g, int timeout_ms)
{
    ZCN_Error e = guard(g, "zcn_group_wait");
    if (e != ZCN_OK)
        return e;
    struct timespec ts;
    if (timeout_ms >= 0)
        deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&g->mu);
    if (!g->start_called && !atomic_load(&g->stopping)) {
        pthread_mutex_unlock(&g->mu);
        return zcn_fail(ZCN_ERR_NOT_STARTED, "call zcn_group_start first");
    }
    while (g->ended < g->n) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&g->cv, &g->mu);
        } else if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) == ETIMEDOUT &&
                   g->ended < g->n) {
            uint32_t left = g->n - g->ended;
            pthread_mutex_unlock(&g->mu);
            return zcn_fail(ZCN_ERR_TIMEOUT, "%u of %u loops still run", left, g->n);
        }
    }
    e = g->first_error;
    char detail[DETAIL_MAX] = "";
    for (uint32_t i = 0; i < g->n; i++)
        if (e != ZCN_OK && g->m[i].error == e) {
            snprintf(detail, sizeof detail, "%s", g->m[i].detail);
            break;
        }
    pthread_mutex_unlock(&g->mu);
    return e == ZCN_OK ? ZCN_OK : zcn_fail(e, "%s", detail);
}

ZCN_Error zcn_group_destroy(ZCN_Group *g)
{
    ZCN_Error e = guard(g, "zcn_group_destroy");
    if (e != ZCN_OK)
        return e;
    /* zcn_group_stop calls racing us finish first; later ones find nothing. */
    zcn_live_remove(g->live_slot);
    cancel_and_free(g);
    return ZCN_OK;
}

/* ------------------------------------------------------------------ */
/* queries                                                             */
/* ------------------------------------------------------------------ */

uint32_t zcn_group_size(const ZCN_Group *g)
{
    return g == NULL ? 0 : g->n;
}

uint16_t zcn_group_port(const ZCN_Group *g)
{
    return g == NULL ? 0 : g->port;
}

ZCN_Loop *zcn_group_loop(const ZCN_Group *g, uint32_t index)
{
    if (g == NULL || index >= g->n)
        return NULL;
    return atomic_load(&g->m[index].loop);
}

ZCN_Server *zcn_group_server(const ZCN_Group *g, uint32_t index)
{
    if (g == NULL || index >= g->n)
        return NULL;
    return atomic_load(&g->m[index].server);
}

int zcn_group_cpu(const ZCN_Group *g, uint32_t index)
{
    if (g == NULL || index >= g->n)
        return -1;
    return g->m[index].cpu;
}

ZCN_Loop *zcn_group_current(const ZCN_Group *g, uint32_t *index_out)
{
    if (g == NULL || !on_group_thread(g)) {
        if (index_out != NULL)
            *index_out = UINT32_MAX;
        return NULL;
    }
    if (index_out != NULL)
        *index_out = current_member->index;
    return atomic_load(&current_member->loop);
}

/* Runs on the loop's thread (queued by zcn_group_stats): its counters,
 * read where they are written, for other threads to copy. */
static void publish_stats(void *arg)
{
    struct member *t = arg;
    ZCN_Loop *loop = atomic_load(&t->loop);
    ZCN_LoopStats st;
    zcn_loop_stats(loop, &st);
    pthread_mutex_lock(&t->g->mu);
    t->snap = st;
    t->snap_gen++;
    t->snap_asked = false;
    pthread_cond_broadcast(&t->g->cv);
    pthread_mutex_unlock(&t->g->mu);
}

_Static_assert(sizeof(ZCN_LoopStats) % sizeof(uint64_t) == 0 &&
                   sizeof(ZCN_LoopStats) == sizeof(ZCN_ServerStats) + 13 * sizeof(uint64_t),
               "ZCN_LoopStats is all uint64_t: add_stats sums it as an array");

static void add_stats(ZCN_LoopStats *sum, const ZCN_LoopStats *x)
{
    /* Every field of both structs is a uint64_t counter or gauge. */
    uint64_t *a = (uint64_t *)sum;
    const uint64_t *b = (const uint64_t *)x;
    for (size_t i = 0; i < sizeof *sum / sizeof(uint64_t); i++)
        a[i] += b[i];
}

/* Counters are plain fields written by each loop's own thread, so
 * another thread does not read them in place: it asks each running loop
 * to publish a copy (a zcn_loop_call, off the per-message path) and waits
 * for it, at most STATS_WAIT_MS. A loop's own thread reads its own loop
 * directly and takes the last published copy of the others (asking for a
 * fresher one), never waiting on another loop that might wait on it. */
#define STATS_WAIT_MS 500

ZCN_Error zcn_group_stats(const ZCN_Group *cg, ZCN_GroupStats *out, ZCN_LoopStats *per_loop,
                          uint32_t capacity)
{
    if (cg == NULL || out == NULL)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "group or out is NULL");
    if (per_loop == NULL && capacity != 0)
        return zcn_fail(ZCN_ERR_INVALID_ARGUMENT, "per_loop is NULL with a capacity");
    ZCN_Group *g = (ZCN_Group *)cg;
    memset(out, 0, sizeof *out);
    bool waits = !on_group_thread(g);
    uint64_t *gen0 = waits ? calloc(g->n, sizeof *gen0) : NULL;
    if (waits && gen0 == NULL)
        return zcn_fail((ZCN_Error)ENOMEM, "zcn_group_stats");
    pthread_mutex_lock(&g->mu);
    for (uint32_t i = 0; i < g->n; i++) {
        struct member *t = &g->m[i];
        if (waits)
            gen0[i] = t->snap_gen;
        if (!t->running || t == current_member || t->snap_asked)
            continue;
        ZCN_Loop *l = atomic_load(&t->loop);
        if (l != NULL && zcn_loop_call(l, publish_stats, t) == ZCN_OK)
            t->snap_asked = true;
    }
    if (waits) {
        struct timespec ts;
        deadline_after(&ts, STATS_WAIT_MS);
        for (uint32_t i = 0; i < g->n; i++) {
            struct member *t = &g->m[i];
            while (t->running && t->snap_asked && t->snap_gen == gen0[i])
                if (pthread_cond_timedwait(&g->cv, &g->mu, &ts) == ETIMEDOUT)
                    break;
        }
    }
    out->threads = g->n;
    out->loop_errors = g->loop_errors;
    for (uint32_t i = 0; i < g->n; i++) {
        struct member *t = &g->m[i];
        ZCN_LoopStats st;
        ZCN_Loop *l = atomic_load(&t->loop);
        if (t == current_member && l != NULL)
            zcn_loop_stats(l, &st);
        else if (t->final_valid)
            st = t->final;
        else if (t->running || t->snap_gen > 0)
            st = t->snap;
        else if (l != NULL && g->go == GO_WAIT)
            zcn_loop_stats(l, &st); /* its thread waits for start: untouched */
        else
            memset(&st, 0, sizeof st);
        add_stats(&out->total, &st);
        out->running += t->running;
        if (i < capacity)
            per_loop[i] = st;
    }
    pthread_mutex_unlock(&g->mu);
    free(gen0);
    return ZCN_OK;
}
