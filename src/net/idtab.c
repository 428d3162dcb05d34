#include "idtab.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#define CHUNK_BITS 12
#define CHUNK_SLOTS (1u << CHUNK_BITS)
#define MAX_CHUNKS 4096u /* 16 M slots */
#define NO_SLOT UINT32_MAX

struct pier__slot_s {
    atomic_uint_fast64_t state; /* gen << 32 | live */
    _Atomic(pier_loop_t *) loop;
    pier_conn_t *conn;          /* touched only by the owning loop */
    uint32_t next_free;
};

static _Atomic(pier__slot_t *) chunks[MAX_CHUNKS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint32_t free_head = NO_SLOT;
static uint32_t nslots;

static pier__slot_t *slot_at(uint32_t idx) {
    if (idx >= MAX_CHUNKS * CHUNK_SLOTS)
        return NULL;
    pier__slot_t *chunk = atomic_load_explicit(&chunks[idx >> CHUNK_BITS], memory_order_acquire);
    return chunk ? &chunk[idx & (CHUNK_SLOTS - 1)] : NULL;
}

static uint32_t take_slot(void) {
    if (free_head != NO_SLOT) {
        uint32_t idx = free_head;
        free_head = slot_at(idx)->next_free;
        return idx;
    }
    if (nslots % CHUNK_SLOTS == 0) {
        if (nslots / CHUNK_SLOTS >= MAX_CHUNKS)
            return NO_SLOT;
        pier__slot_t *chunk = calloc(CHUNK_SLOTS, sizeof *chunk);
        if (!chunk)
            return NO_SLOT;
        for (uint32_t i = 0; i < CHUNK_SLOTS; i++)
            atomic_init(&chunk[i].state, (uint64_t)1 << 32); /* generation 1, not live */
        atomic_store_explicit(&chunks[nslots / CHUNK_SLOTS], chunk, memory_order_release);
    }
    return nslots++;
}

pier_id_t pier__id_alloc(pier_loop_t *loop, pier_conn_t *conn) {
    pthread_mutex_lock(&mu);
    uint32_t idx = take_slot();
    pthread_mutex_unlock(&mu);
    if (idx == NO_SLOT)
        return PIER_ID_NONE;
    pier__slot_t *s = slot_at(idx);
    s->conn = conn;
    atomic_store_explicit(&s->loop, loop, memory_order_relaxed);
    uint64_t gen = atomic_load(&s->state) >> 32;
    atomic_store_explicit(&s->state, gen << 32 | 1, memory_order_release);
    return gen << 32 | idx;
}

void pier__id_release(pier_id_t id) {
    uint32_t idx = (uint32_t)id;
    pier__slot_t *s = slot_at(idx);
    if (!s)
        return;
    uint32_t gen = (uint32_t)(id >> 32) + 1;
    if (gen == 0) /* generation 0 would make id 0 valid */
        gen = 1;
    s->conn = NULL;
    atomic_store_explicit(&s->state, (uint64_t)gen << 32, memory_order_release);
    pthread_mutex_lock(&mu);
    s->next_free = free_head;
    free_head = idx;
    pthread_mutex_unlock(&mu);
}

void pier__id_closing(pier_id_t id) {
    pier__slot_t *s = slot_at((uint32_t)id);
    if (s)
        atomic_store_explicit(&s->state, id & 0xffffffff00000000ull, memory_order_release);
}

static pier__slot_t *live_slot(pier_id_t id) {
    pier__slot_t *s = slot_at((uint32_t)id);
    if (!s || (id >> 32) == 0)
        return NULL;
    uint64_t want = (id & 0xffffffff00000000ull) | 1;
    return atomic_load_explicit(&s->state, memory_order_acquire) == want ? s : NULL;
}

pier_conn_t *pier__id_conn(pier_id_t id) {
    pier__slot_t *s = live_slot(id);
    return s ? s->conn : NULL;
}

pier_loop_t *pier__id_loop(pier_id_t id) {
    pier__slot_t *s = live_slot(id);
    return s ? atomic_load_explicit(&s->loop, memory_order_relaxed) : NULL;
}

int pier_id_alive(pier_id_t id) { return live_slot(id) != NULL; }

void pier__id_test_set_next_gen(uint32_t idx, uint32_t gen) {
    pier__slot_t *s = slot_at(idx);
    if (s && !(atomic_load(&s->state) & 1))
        atomic_store(&s->state, (uint64_t)gen << 32);
}
