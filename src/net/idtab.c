#include "idtab.h"
#include "conn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BITS 12
#define CHUNK_SLOTS (1u << CHUNK_BITS)
#define MAX_CHUNKS 4096u /* 16 M slots: a slot index never reaches PIER__ID_DEAD */
#define NO_SLOT UINT32_MAX

_Static_assert((uint64_t)MAX_CHUNKS * CHUNK_SLOTS <= PIER__ID_DEAD, "the dead bit is above every slot index");

static _Atomic(pier_conn_t *) chunks[MAX_CHUNKS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint32_t free_head = NO_SLOT;
static uint32_t nslots;
static atomic_size_t nlive;

/* A free slot's next free slot is kept in its reference count, 0 in a connection's use. */
#define NEXT_FREE(c) ((c)->refs)

static pier_conn_t *slot_at(uint32_t idx) {
    if (idx >= MAX_CHUNKS * CHUNK_SLOTS)
        return NULL;
    pier_conn_t *chunk = atomic_load_explicit(&chunks[idx >> CHUNK_BITS], memory_order_acquire);
    return chunk ? &chunk[idx & (CHUNK_SLOTS - 1)] : NULL;
}

static uint32_t take_slot(void) {
    if (free_head != NO_SLOT) {
        uint32_t idx = free_head;
        free_head = NEXT_FREE(slot_at(idx));
        return idx;
    }
    if (nslots % CHUNK_SLOTS == 0) {
        if (nslots / CHUNK_SLOTS >= MAX_CHUNKS)
            return NO_SLOT;
        /* calloc: the pages are touched only as slots are used */
        pier_conn_t *chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
        if (!chunk)
            return NO_SLOT;
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++) /* generation 0, dead: the first alloc makes it 1 */
            atomic_init(&chunk[i].aid, (uint64_t)(nslots + i) | PIER__ID_DEAD);
        atomic_store_explicit(&chunks[nslots / CHUNK_SLOTS], chunk, memory_order_release);
    }
    return nslots++;
}

pier_conn_t *pier__id_alloc(pier_loop_t *loop) {
    pthread_mutex_lock(&mu);
    uint32_t idx = take_slot();
    pthread_mutex_unlock(&mu);
    if (idx == NO_SLOT)
        return NULL;
    pier_conn_t *c = slot_at(idx);
    uint32_t gen = (uint32_t)(atomic_load_explicit(&c->aid, memory_order_relaxed) >> 32) + 1;
    if (gen == 0) /* generation 0 would make id 0 valid */
        gen = 1;
    /* aid and loop stay out of the clearing: another thread may be reading them */
    memset((char *)c + offsetof(pier_conn_t, io), 0, sizeof *c - offsetof(pier_conn_t, io));
    atomic_store_explicit(&c->loop, loop, memory_order_relaxed);
    atomic_store_explicit(&c->aid, (uint64_t)gen << 32 | idx, memory_order_release);
    atomic_fetch_add_explicit(&nlive, 1, memory_order_relaxed);
    return c;
}

pier_id_t pier__id_of(const pier_conn_t *c) {
    return atomic_load_explicit(&((pier_conn_t *)c)->aid, memory_order_relaxed) & ~(uint64_t)PIER__ID_DEAD;
}

void pier__id_release(pier_conn_t *c) {
    atomic_fetch_or_explicit(&c->aid, PIER__ID_DEAD, memory_order_release);
}

void pier__id_free(pier_conn_t *c) {
    uint32_t idx = (uint32_t)pier__id_of(c);
    pier__id_release(c);
    pthread_mutex_lock(&mu);
    NEXT_FREE(c) = free_head;
    free_head = idx;
    pthread_mutex_unlock(&mu);
    atomic_fetch_sub_explicit(&nlive, 1, memory_order_relaxed);
}

static pier_conn_t *live_slot(pier_id_t id) {
    if ((id >> 32) == 0 || ((uint32_t)id & PIER__ID_DEAD))
        return NULL;
    pier_conn_t *c = slot_at((uint32_t)id);
    return c && atomic_load_explicit(&c->aid, memory_order_acquire) == id ? c : NULL;
}

pier_conn_t *pier__id_conn(pier_id_t id) { return live_slot(id); }

pier_loop_t *pier__id_loop(pier_id_t id) {
    pier_conn_t *c = live_slot(id);
    return c ? atomic_load_explicit(&c->loop, memory_order_relaxed) : NULL;
}

int pier_id_alive(pier_id_t id) { return live_slot(id) != NULL; }

void pier__id_mem(size_t *bytes, size_t *slots, size_t *live) {
    pthread_mutex_lock(&mu);
    size_t n = nslots;
    pthread_mutex_unlock(&mu);
    *slots = (n + CHUNK_SLOTS - 1) / CHUNK_SLOTS * CHUNK_SLOTS;
    *bytes = *slots * sizeof(pier_conn_t);
    *live = atomic_load_explicit(&nlive, memory_order_relaxed);
}

void pier__id_test_set_next_gen(uint32_t idx, uint32_t gen) {
    pier_conn_t *c = slot_at(idx);
    uint64_t aid = c ? atomic_load(&c->aid) : 0;
    if (c && (aid & PIER__ID_DEAD))
        atomic_store(&c->aid, (uint64_t)(gen - 1) << 32 | idx | PIER__ID_DEAD);
}
