/* The connection id table: ids come and go, a released id is stale for good, the
 * generation wraps past 0 without ever making id 0 (or a generation-0 id) valid, and many
 * threads can take and end ids at once.
 *
 * pier-test: threads */
#include "support.h"

#include <pier/net.h>
#include "net/idtab.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static pier_loop_t *loop;

/* The table holds the connections themselves: taking an id takes a slot's connection;
 * ending it makes the id stale and gives the slot back (finalize, then the last unref). */
static pier_id_t take(pier_conn_t **out) {
    pier_conn_t *c = pier__id_alloc(loop);
    if (out)
        *out = c;
    return c ? pier__id_of(c) : PIER_ID_NONE;
}

static void end(pier_id_t id) {
    pier_conn_t *c = pier__id_conn(id);
    assert_non_null(c);
    pier__id_release(c);
    pier__id_free(c);
}

static int setup(void **state) {
    return pier_loop_new(&loop);
}

static int teardown(void **state) {
    pier_test_free_loop(loop);
    return 0;
}

static uint32_t slot_of(pier_id_t id) { return (uint32_t)id; }
static uint32_t gen_of(pier_id_t id) { return (uint32_t)(id >> 32); }

static void test_alloc_release(void **state) {
    pier_id_t a = take(NULL);
    pier_id_t b = take(NULL);
    assert_true(a != PIER_ID_NONE);
    assert_true(b != PIER_ID_NONE);
    assert_true(a != b);
    assert_true(gen_of(a) != 0);
    assert_true(gen_of(b) != 0);
    assert_true(pier_id_alive(a));
    assert_true(pier_id_alive(b));
    assert_int_equal(pier__id_of(pier__id_conn(a)), a);
    assert_int_equal(pier__id_of(pier__id_conn(b)), b);
    assert_ptr_equal(pier__id_loop(a), loop);

    end(a);
    assert_false(pier_id_alive(a));
    assert_null(pier__id_conn(a));
    assert_null(pier__id_loop(a));
    assert_true(pier_id_alive(b)); /* untouched */

    /* the slot is reused, under a new generation: the old id stays stale */
    pier_id_t c = take(NULL);
    assert_true(c != a);
    if (slot_of(c) == slot_of(a))
        assert_true(gen_of(c) != gen_of(a));
    assert_false(pier_id_alive(a));
    assert_null(pier__id_conn(a));
    assert_int_equal(pier__id_of(pier__id_conn(c)), c);

    end(b);
    end(c);
    assert_false(pier_id_alive(b));
    assert_false(pier_id_alive(c));
}

static void test_stale_after_many_reuses(void **state) {
    /* take and end the same slot many times: every earlier id answers "gone" */
    pier_id_t old[100];
    for (int i = 0; i < 100; i++) {
        old[i] = take(NULL);
        assert_true(pier_id_alive(old[i]));
        end(old[i]);
    }
    pier_id_t now = take(NULL);
    for (int i = 0; i < 100; i++) {
        assert_true(old[i] != now);
        assert_false(pier_id_alive(old[i]));
        assert_null(pier__id_loop(old[i]));
    }
    assert_true(pier_id_alive(now));
    end(now);
}

static void test_bogus_ids(void **state) {
    assert_false(pier_id_alive(PIER_ID_NONE));
    assert_null(pier__id_conn(PIER_ID_NONE));
    assert_null(pier__id_loop(PIER_ID_NONE));
    /* a slot far beyond anything allocated, and the largest possible id */
    assert_false(pier_id_alive((pier_id_t)1 << 32 | 0x7fffffffu));
    assert_false(pier_id_alive(UINT64_MAX));
    assert_null(pier__id_loop(UINT64_MAX));
    /* an id with the dead bit, for a slot that does not exist */
    assert_false(pier_id_alive((pier_id_t)1 << 32 | 0xfffffff0u));
    /* a live slot asked with generation 0 */
    pier_id_t a = take(NULL);
    assert_false(pier_id_alive((pier_id_t)slot_of(a)));
    assert_null(pier__id_conn((pier_id_t)slot_of(a)));
    end(a);
}

static void test_generation_wrap(void **state) {
    /* find a free slot to work on: take one and give it back, so it is next to be reused */
    pier_id_t a = take(NULL);
    uint32_t slot = slot_of(a);
    end(a);

    pier__id_test_set_next_gen(slot, UINT32_MAX);
    pier_id_t top = take(NULL);
    assert_int_equal(slot_of(top), slot);
    assert_int_equal(gen_of(top), UINT32_MAX);
    assert_true(pier_id_alive(top));
    assert_int_equal(pier__id_of(pier__id_conn(top)), top);
    end(top);
    assert_false(pier_id_alive(top));

    /* the generation after UINT32_MAX is 1, never 0 */
    pier_id_t wrapped = take(NULL);
    assert_int_equal(slot_of(wrapped), slot);
    assert_int_equal(gen_of(wrapped), 1);
    assert_true(wrapped != PIER_ID_NONE);
    assert_true(pier_id_alive(wrapped));
    assert_false(pier_id_alive(top));
    assert_false(pier_id_alive((pier_id_t)slot)); /* generation 0 of the same slot */
    assert_false(pier_id_alive(PIER_ID_NONE));
    assert_null(pier__id_conn(PIER_ID_NONE));
    end(wrapped);

    /* slot 0 in particular: its generation-0 id is PIER_ID_NONE, which must stay dead.
     * Take ids until slot 0 comes back from the free list. */
    enum { MAXTAKE = 1 << 16 };
    pier_id_t *ids = malloc(MAXTAKE * sizeof *ids);
    int n = 0;
    pier_id_t z = PIER_ID_NONE;
    while (n < MAXTAKE) {
        pier_id_t id = take(NULL);
        assert_true(id != PIER_ID_NONE);
        if (slot_of(id) == 0) {
            z = id;
            break;
        }
        ids[n++] = id;
    }
    assert_true(z != PIER_ID_NONE);
    end(z);
    pier__id_test_set_next_gen(0, UINT32_MAX);
    z = take(NULL);
    assert_int_equal(z, (pier_id_t)UINT32_MAX << 32);
    end(z);
    assert_false(pier_id_alive(PIER_ID_NONE));
    z = take(NULL);
    assert_int_equal(z, (pier_id_t)1 << 32);
    assert_true(pier_id_alive(z));
    assert_false(pier_id_alive(PIER_ID_NONE));
    assert_null(pier__id_conn(PIER_ID_NONE));
    assert_null(pier__id_loop(PIER_ID_NONE));
    end(z);
    for (int i = 0; i < n; i++)
        end(ids[i]);
    free(ids);
}

/* set_next_gen leaves a live slot alone: it cannot revive or kill an id in use */
static void test_set_gen_ignores_live(void **state) {
    pier_id_t a = take(NULL);
    pier__id_test_set_next_gen(slot_of(a), 77);
    assert_true(pier_id_alive(a));
    end(a);
}

/* ---- many threads ---- */

#define THREADS 4
#define ROUNDS 20000
#define HELD 64

static atomic_int bad;

static void *worker(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    pier_id_t held[HELD];
    pier_conn_t *mine[HELD];
    unsigned seed = (unsigned)me * 7919u + 1;
    for (int i = 0; i < HELD; i++)
        held[i] = PIER_ID_NONE;
    for (int r = 0; r < ROUNDS; r++) {
        int k = (int)(rand_r(&seed) % HELD);
        if (held[k] != PIER_ID_NONE) {
            /* still ours: alive and naming our connection, whatever the others do */
            if (!pier_id_alive(held[k]) || pier__id_conn(held[k]) != mine[k] || pier__id_loop(held[k]) != loop)
                atomic_fetch_add(&bad, 1);
            pier_id_t gone = held[k];
            pier__id_release(mine[k]);
            pier__id_free(mine[k]);
            held[k] = PIER_ID_NONE;
            if (pier_id_alive(gone))
                atomic_fetch_add(&bad, 1); /* nobody else can bring back this generation */
        } else {
            pier_id_t id = take(&mine[k]);
            if (id == PIER_ID_NONE || gen_of(id) == 0 || !pier_id_alive(id))
                atomic_fetch_add(&bad, 1);
            held[k] = id;
        }
    }
    for (int i = 0; i < HELD; i++)
        if (held[i] != PIER_ID_NONE) {
            pier__id_release(mine[i]);
            pier__id_free(mine[i]);
        }
    return NULL;
}

static void test_threads(void **state) {
    atomic_store(&bad, 0);
    pthread_t th[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&bad), 0);
}

/* Live ids held by different threads at the same time are all distinct. */
#define UNIQ_PER 2000
static pier_id_t uniq[THREADS][UNIQ_PER];

static void *taker(void *arg) {
    uintptr_t me = (uintptr_t)arg;
    for (int i = 0; i < UNIQ_PER; i++)
        uniq[me][i] = take(NULL);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void test_threads_unique(void **state) {
    pthread_t th[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, taker, (void *)i), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    /* live ids at the same time: each in a slot of its own */
    uint32_t *slots = malloc(THREADS * UNIQ_PER * sizeof *slots);
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < UNIQ_PER; i++) {
            assert_true(uniq[t][i] != PIER_ID_NONE);
            slots[t * UNIQ_PER + i] = slot_of(uniq[t][i]);
        }
    qsort(slots, THREADS * UNIQ_PER, sizeof *slots, cmp_u32);
    for (int i = 1; i < THREADS * UNIQ_PER; i++)
        assert_true(slots[i] != slots[i - 1]);
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < UNIQ_PER; i++) {
            assert_int_equal(pier__id_of(pier__id_conn(uniq[t][i])), uniq[t][i]);
            end(uniq[t][i]);
            assert_false(pier_id_alive(uniq[t][i]));
        }
    free(slots);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_release),
        cmocka_unit_test(test_stale_after_many_reuses),
        cmocka_unit_test(test_bogus_ids),
        cmocka_unit_test(test_generation_wrap),
        cmocka_unit_test(test_set_gen_ignores_live),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_unique),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
