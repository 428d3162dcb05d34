/* The process-wide connection id table. An id is slot (low 32 bits) plus generation
 * (high 32 bits, never 0). A slot's state word holds its current generation and a live
 * bit in one atomic, so "is this id alive" is a single load from any thread. Slots live
 * in chunks that are never moved or freed, so a stale id can always be looked up. */
#ifndef PIER_NET_IDTAB_H
#define PIER_NET_IDTAB_H

#include <stdint.h>
#include <pier/net.h>

typedef struct pier__slot_s pier__slot_t;

/* Takes a free slot for conn on loop; returns its id, or 0 when out of memory/slots. */
pier_id_t pier__id_alloc(pier_loop_t *loop, pier_conn_t *conn);
/* Ends the id: its generation moves on, so every copy of it is stale from now on. */
void pier__id_release(pier_id_t id);
/* The connection is closing: the id answers as stale from now on, but the slot is
 * not reused until pier__id_release. */
void pier__id_closing(pier_id_t id);
/* The connection an id names, or NULL if stale. Only meaningful on the owning loop's
 * thread (elsewhere the answer can be stale by the time it is used). */
pier_conn_t *pier__id_conn(pier_id_t id);
/* The loop that owns the id's connection, or NULL if stale. Any thread. */
pier_loop_t *pier__id_loop(pier_id_t id);

/* Tests only: sets the generation a free slot will hand out next. */
void pier__id_test_set_next_gen(uint32_t slot, uint32_t gen);

#endif
