/* pier event loop: epoll, eventfd wake-up, posted tasks, timers, signals, cached clock.
 *
 * Ownership: whoever creates a loop frees it. Nothing registered on a loop owns it.
 * pier_loop_free() on a loop that still has live handles (open connections, listeners,
 * active timers, signal watchers, clients) returns -EBUSY and frees nothing.
 *
 * Threads: a loop runs on one thread. Only pier_loop_post(), pier_loop_stop() and the
 * id-based calls in net.h may be called from other threads. Everything else must be
 * called from the loop's own thread (or before the loop runs).
 *
 * Errors: functions return 0 or a negative errno; pier_strerror() names them.
 */
#ifndef PIER_LOOP_H
#define PIER_LOOP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PIER_EXTERN __attribute__((visibility("default")))

typedef struct pier_loop_s pier_loop_t;
typedef struct pier_timer_s pier_timer_t;
typedef struct pier_group_s pier_group_t;
typedef struct pier_task_s pier_task_t;

typedef void (*pier_task_cb)(void *arg);
typedef void (*pier_timer_cb)(pier_timer_t *t);
typedef void (*pier_signal_cb)(pier_loop_t *loop, int signo, void *arg);

/* Names a negative errno returned by pier ("connection is gone" for -ENOTCONN, ...). */
PIER_EXTERN const char *pier_strerror(int err);

/* ---- loop ---- */

/* Creates a loop. *out is the caller's to free with pier_loop_free(). -ENOMEM, or a
 * negative errno from epoll_create1/eventfd. Also sets SIGPIPE to ignored if it is at
 * its default, so a peer that resets can never kill the process. */
PIER_EXTERN int pier_loop_new(pier_loop_t **out);

/* Frees a loop that has no live handles and is not running. Tasks still queued run
 * first (on the calling thread); -EBUSY (and nothing freed) if handles are then live. */
PIER_EXTERN int pier_loop_free(pier_loop_t *loop);

/* Runs the loop on the calling thread until pier_loop_stop(). Returns 0, or -EBUSY if
 * the loop is already running. */
PIER_EXTERN int pier_loop_run(pier_loop_t *loop);

/* Runs one iteration: waits at most timeout_ms (-1: until an event) and processes it.
 * -EBUSY if the loop is running on another thread, or if called from inside one of this
 * loop's own callbacks: a nested iteration would run the close pass, and so on_close,
 * under a callback that is still on the stack. */
PIER_EXTERN int pier_loop_run_once(pier_loop_t *loop, int timeout_ms);

/* Asks the loop to return from pier_loop_run() after its current iteration. Any thread,
 * any time, also from a signal callback. Idempotent. */
PIER_EXTERN void pier_loop_stop(pier_loop_t *loop);

/* Queues fn(arg) to run on the loop's thread in a later iteration, in FIFO order. Any
 * thread. -ENOMEM if the task could not be queued (fn will then never run). */
PIER_EXTERN int pier_loop_post(pier_loop_t *loop, pier_task_cb fn, void *arg);

/* A task the caller embeds in its own memory (as libuv's uv_async_t is embedded), so that
 * posting it never allocates and cannot fail. Initialise it with pier_task_init(); the
 * fields are pier's while it is queued. */
struct pier_task_s {
    pier_task_t *next;
    pier_task_cb fn;
    void *arg;
    unsigned flags;   /* pier's: set while queued, and for tasks pier allocated */
};

PIER_EXTERN void pier_task_init(pier_task_t *t, pier_task_cb fn, void *arg);
/* Queues t to run fn(arg) once on the loop's thread in a later iteration, FIFO with
 * pier_loop_post. Any thread; never allocates, never fails. The memory must stay valid
 * until fn has started (fn may free it or post it again). Posting a task that is already
 * queued is a caller bug: it returns -EALREADY and changes nothing. */
PIER_EXTERN int pier_loop_post_task(pier_loop_t *loop, pier_task_t *t);

/* Milliseconds of CLOCK_MONOTONIC, cached once per iteration. */
PIER_EXTERN uint64_t pier_loop_now(const pier_loop_t *loop);

/* Re-reads the clock into the cache. */
PIER_EXTERN void pier_loop_update_time(pier_loop_t *loop);

/* Number of live handles (connections, listeners, active timers, signal watchers...). */
PIER_EXTERN unsigned pier_loop_handles(const pier_loop_t *loop);

/* True when called from the thread currently running this loop. */
PIER_EXTERN int pier_loop_is_current(const pier_loop_t *loop);

/* The user pointer slot of a loop (pier never reads it). */
PIER_EXTERN void pier_loop_set_data(pier_loop_t *loop, void *data);
PIER_EXTERN void *pier_loop_data(const pier_loop_t *loop);

/* ---- timers: an intrusive binary min-heap; start, stop and re-arm are O(log n) ----
 *
 * The struct is the caller's memory (embed it); pier never frees it. The heap node lives
 * in the timer itself, so starting a timer never allocates and cannot fail: a deadline
 * (an idle timeout, a close deadline) is never lost to a shortage of memory. An active
 * timer counts as a live handle. The callback runs on the loop thread; it may stop,
 * restart or free its own timer. */
struct pier_timer_s {
    pier_loop_t *loop;
    pier_timer_cb cb;
    void *data;
    uint64_t due;      /* absolute ms */
    uint64_t repeat;   /* 0: one-shot */
    uint64_t seq;      /* FIFO among timers due at the same ms */
    struct pier_timer_s *heap_parent, *heap_left, *heap_right; /* pier's: the heap node */
    int active;
};

PIER_EXTERN void pier_timer_init(pier_loop_t *loop, pier_timer_t *t, pier_timer_cb cb, void *data);
/* (Re)starts: fires after timeout_ms, then every repeat_ms if repeat_ms > 0. Never fails.
 * Inside the loop's callbacks it counts from the iteration's time (pier_loop_now);
 * between iterations (before the loop first runs, say) from the clock at the call. */
PIER_EXTERN void pier_timer_start(pier_timer_t *t, uint64_t timeout_ms, uint64_t repeat_ms);
/* Stops; a no-op on an inactive timer. */
PIER_EXTERN void pier_timer_stop(pier_timer_t *t);
PIER_EXTERN int pier_timer_active(const pier_timer_t *t);

/* ---- signals, through signalfd ----
 *
 * Blocks signo in the calling thread (so call this before starting other threads, which
 * inherit the mask) and delivers it as cb on the loop thread. Counts as a live handle
 * until pier_loop_signal_stop(). -EINVAL for a bad signal, -EEXIST if already watched. */
PIER_EXTERN int pier_loop_signal(pier_loop_t *loop, int signo, pier_signal_cb cb, void *arg);
PIER_EXTERN void pier_loop_signal_stop(pier_loop_t *loop, int signo);

/* ---- loop group: N loops on N threads; each connection stays on one loop for life ----
 *
 * The group owns its loops (it created them) and frees them in pier_group_free(). */

/* nloops 0 means the number of online CPUs. */
PIER_EXTERN int pier_group_new(pier_group_t **out, unsigned nloops);
PIER_EXTERN unsigned pier_group_size(const pier_group_t *g);
PIER_EXTERN pier_loop_t *pier_group_loop(const pier_group_t *g, unsigned i);
/* Runs loop 0 on the calling thread and loops 1..N-1 on new threads; returns after
 * pier_group_stop() once every thread has been joined. */
PIER_EXTERN int pier_group_run(pier_group_t *g);
/* Any thread. Stops every loop. */
PIER_EXTERN void pier_group_stop(pier_group_t *g);
/* -EBUSY if running or if any loop still has live handles. */
PIER_EXTERN int pier_group_free(pier_group_t *g);

/* ---- logging: one line to stderr, "pier: LEVEL: message" ---- */
enum { PIER_LOG_ERROR = 0, PIER_LOG_WARN = 1, PIER_LOG_INFO = 2, PIER_LOG_DEBUG = 3 };
PIER_EXTERN void pier_log_set_level(int level);
PIER_EXTERN int pier_log_level(void);
PIER_EXTERN void pier_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
