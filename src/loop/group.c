/* A loop group: N loops, loop 0 on the caller's thread and the rest on their own. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

struct pier_group_s {
    unsigned n;
    atomic_int running;
    pier_loop_t **loops;
    pthread_t *threads;
};

int pier_group_new(pier_group_t **out, unsigned nloops) {
    if (nloops == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nloops = cpus > 0 ? (unsigned)cpus : 1;
    }
    if (nloops > 1024)
        return -EINVAL;
    pier_group_t *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->loops = calloc(nloops, sizeof *g->loops);
    g->threads = calloc(nloops, sizeof *g->threads);
    if (!g->loops || !g->threads) {
        free(g->loops);
        free(g->threads);
        free(g);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < nloops; i++) {
        int err = pier_loop_new(&g->loops[i]);
        if (err < 0) {
            g->n = i;
            pier_group_free(g);
            return err;
        }
    }
    g->n = nloops;
    *out = g;
    return 0;
}

unsigned pier_group_size(const pier_group_t *g) { return g->n; }

pier_loop_t *pier_group_loop(const pier_group_t *g, unsigned i) { return i < g->n ? g->loops[i] : NULL; }

static void *thread_main(void *arg) {
    pier_loop_run(arg);
    return NULL;
}

int pier_group_run(pier_group_t *g) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&g->running, &expected, 1))
        return -EBUSY;
    unsigned started = 1;
    int err = 0;
    for (; started < g->n; started++) {
        int rc = pthread_create(&g->threads[started], NULL, thread_main, g->loops[started]);
        if (rc) {
            err = -rc;
            pier_log(PIER_LOG_ERROR, "cannot start loop thread %u: %s", started, pier_strerror(err));
            pier_group_stop(g);
            break;
        }
    }
    if (err == 0)
        pier_loop_run(g->loops[0]);
    pier_group_stop(g);
    for (unsigned i = 1; i < started; i++)
        pthread_join(g->threads[i], NULL);
    /* the stop above may have reached loops that had already returned: clear it, or
     * the next run (or the drain iterations in pier_group_free) would not wait */
    for (unsigned i = 0; i < g->n; i++)
        atomic_store(&g->loops[i]->stop, 0);
    atomic_store(&g->running, 0);
    return err;
}

void pier_group_stop(pier_group_t *g) {
    for (unsigned i = 0; i < g->n; i++)
        pier_loop_stop(g->loops[i]);
}

int pier_group_free(pier_group_t *g) {
    if (!g)
        return 0;
    if (atomic_load(&g->running))
        return -EBUSY;
    for (unsigned i = 0; i < g->n; i++) {
        /* let closes and posted clean-ups that were requested at stop finish */
        for (int k = 0; k < 100 && (g->loops[i]->handles > 0 || atomic_load(&g->loops[i]->tasks_queued)); k++)
            pier_loop_run_once(g->loops[i], 10);
        if (g->loops[i]->handles > 0)
            return -EBUSY;
    }
    for (unsigned i = 0; i < g->n; i++)
        pier_loop_free(g->loops[i]);
    free(g->loops);
    free(g->threads);
    free(g);
    return 0;
}
