/* The process-wide connection table: it holds the connections themselves, so an idle
 * connection costs its struct and nothing more (no allocator header, no separate slot).
 * An id is slot (low 32 bits) plus generation (high 32 bits, never 0). A connection's
 * aid word holds its id with a dead bit, in one atomic, so "is this id alive" is a single
 * load from any thread. Slots live in chunks that are never moved or freed, so a stale id
 * can always be looked up; a slot is reused, under the next generation, only once the
 * last reference to its connection has gone. */
#ifndef PIER_NET_IDTAB_H
#define PIER_NET_IDTAB_H

#include <stdint.h>
#include <pier/net.h>

#define PIER__ID_DEAD 0x80000000u /* in aid: the id answers as stale (slots < 2^24) */

/* A connection in a free slot, owned by loop, zeroed but for its id (alive) and loop.
 * NULL when out of memory or slots. */
pier_conn_t *pier__id_alloc(pier_loop_t *loop);
/* The connection's id (also once it is stale). */
pier_id_t pier__id_of(const pier_conn_t *c);
/* The id answers as stale from now on (closing); the slot stays the connection's. */
void pier__id_release(pier_conn_t *c);
/* The memory goes back to the table (the last reference has gone). */
void pier__id_free(pier_conn_t *c);
/* The connection an id names, or NULL if stale. Only meaningful on the owning loop's
 * thread (elsewhere the answer can be stale by the time it is used). */
pier_conn_t *pier__id_conn(pier_id_t id);
/* The loop that owns the id's connection, or NULL if stale. Any thread. */
pier_loop_t *pier__id_loop(pier_id_t id);
/* Bytes of the table's chunks in use and their slots (for the memory figures). */
void pier__id_mem(size_t *bytes, size_t *slots, size_t *live);

/* Tests only: sets the generation a free slot will hand out next. */
void pier__id_test_set_next_gen(uint32_t slot, uint32_t gen);

#endif
