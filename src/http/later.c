/* Deferred responses: a handler takes its response with pier_http_res_later() and any
 * thread finishes it. Each call copies what it needs into a task posted to the
 * connection's loop by id (pier_with_conn), so a client that has gone costs nothing but
 * the -ENOTCONN. The connection waits in WAIT meanwhile, its later requests kept in
 * pending, so the responses leave in request order.
 */
#include "http/http_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A deferred response's output, posted or queued and not yet written to the socket,
 * above which pier_http_later_write answers -ENOBUFS. Above the connection's high water
 * mark, so once a write has been refused the core's on_drain is sure to come and say the
 * queue has gone down. */
#define LATER_MAX_QUEUED (1024u * 1024)

/* Shared by the application (until send, end or cancel) and the connection (until the
 * response is done or the connection closes): freed when both have let go. The counters
 * let pier_http_later_write see, from any thread, how much output waits for the client;
 * each has one writer, and all are read and written atomically. */
struct pier_http_later_s {
    pier_id_t id;
    uint64_t seq;
    int refs;
    size_t posted;      /* bytes handed to pier_http_later_write (application) */
    size_t ran;         /* of those, bytes the loop has queued on the connection (loop) */
    size_t conn_queued; /* the connection's unwritten output when last seen (loop) */
    size_t fields_len;
    char fields[];
};

enum { OP_SEND, OP_BEGIN, OP_WRITE, OP_END };

typedef struct {
    int op, status;
    uint64_t seq;
    char ctype[128];
    size_t fields_len, len;
    char *fields;
    char data[];
} later_task_t;

static void later_unref(pier_http_later_t *l) {
    if (__atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(l);
}

void pier__http_later_detach(pier__http_conn_t *hc) {
    if (hc->later) {
        later_unref(hc->later);
        hc->later = NULL;
    }
}

void pier__http_later_note_queued(pier__http_conn_t *hc) {
    if (hc->later)
        __atomic_store_n(&hc->later->conn_queued, pier_conn_queued(hc->c), __ATOMIC_RELEASE);
}

pier_http_later_t *pier_http_res_later(pier_http_res_t *res) {
    if (res->state != RES_FRESH)
        return NULL;
    pier__http_conn_t *hc = res->hc;
    pier_http_later_t *l = malloc(sizeof *l + res->fields_len);
    if (!l)
        return NULL;
    l->id = pier_conn_id(hc->c);
    l->seq = hc->seq;
    l->refs = 2; /* the application's and the connection's */
    l->posted = l->ran = 0;
    l->conn_queued = pier_conn_queued(hc->c);
    l->fields_len = res->fields_len;
    memcpy(l->fields, res->fields, res->fields_len);
    hc->later = l;
    res->state = RES_LATER;
    hc->state = ST_WAIT;
    return l;
}

/* On the connection's loop. Returns 1 when the response is complete. */
static int later_apply(pier__http_conn_t *hc, const later_task_t *t) {
    const char *ctype = t->ctype[0] ? t->ctype : NULL;
    switch (t->op) {
    case OP_SEND:
        pier__http_send(hc, t->status, ctype, t->fields, t->fields_len, t->data, t->len);
        return 1;
    case OP_BEGIN:
        pier__http_stream_begin(hc, t->status, ctype, t->fields, t->fields_len);
        pier__http_later_note_queued(hc);
        return 0;
    case OP_WRITE:
        if (hc->stream)
            pier__http_stream_write(hc, t->data, t->len);
        if (hc->later) {
            __atomic_add_fetch(&hc->later->ran, t->len, __ATOMIC_ACQ_REL);
            pier__http_later_note_queued(hc);
        }
        return 0;
    default: /* OP_END */
        if (!hc->stream && pier__http_stream_begin(hc, 204, NULL, t->fields, t->fields_len) < 0)
            return 1;
        pier__http_stream_end(hc);
        return 1;
    }
}

static void later_run(pier_conn_t *c, void *arg) {
    later_task_t *t = arg;
    pier__http_conn_t *hc = c && pier_conn_is_open(c) ? pier_conn_data(c) : NULL;
    /* the connection may be gone, or be past this request already (cancelled, reset) */
    if (hc && hc->state == ST_WAIT && hc->seq == t->seq && later_apply(hc, t) && hc->state == ST_HEAD)
        pier__http_process_pending(hc);
    free(t->fields);
    free(t);
}

static int later_post(pier_http_later_t *l, int op, int status, const char *ctype, const void *data, size_t len,
                      int with_fields) {
    later_task_t *t = malloc(sizeof *t + len);
    if (!t)
        return -ENOMEM;
    t->op = op;
    t->status = status;
    t->seq = l->seq;
    t->ctype[0] = '\0';
    if (ctype)
        snprintf(t->ctype, sizeof t->ctype, "%s", ctype);
    t->fields = NULL;
    t->fields_len = 0;
    if (with_fields && l->fields_len) {
        t->fields = malloc(l->fields_len);
        if (!t->fields) {
            free(t);
            return -ENOMEM;
        }
        memcpy(t->fields, l->fields, l->fields_len);
        t->fields_len = l->fields_len;
    }
    t->len = len;
    if (len)
        memcpy(t->data, data, len);
    /* once posted, later_run frees t, also with c NULL if the connection is gone by then */
    int rc = pier_with_conn(l->id, later_run, t);
    if (rc < 0) {
        free(t->fields);
        free(t);
    }
    return rc;
}

/* Resets the connection if it still waits on the deferred response seq: for cancel, and
 * for a send or end that could not be posted, after which nothing else would ever finish
 * that response and the client would wait until the idle timeout. */
static void later_abort_run(pier_conn_t *c, void *arg) {
    pier__http_conn_t *hc = c && pier_conn_is_open(c) ? pier_conn_data(c) : NULL;
    if (!hc || hc->state != ST_WAIT || (uintptr_t)hc->seq != (uintptr_t)arg)
        return;
    hc->state = ST_CLOSED;
    pier__http_later_detach(hc);
    pier_conn_abort(c);
}

/* Needs no allocation of ours (the seq rides in the argument), so it still works when
 * posting the response just failed with -ENOMEM. If the core cannot post even this, a
 * graceful close through the id is the last resort. */
static void later_abort(const pier_http_later_t *l) {
    if (pier_with_conn(l->id, later_abort_run, (void *)(uintptr_t)l->seq) == -ENOMEM)
        pier_close(l->id);
}

static int valid_start(int status, const char *ctype) {
    return status >= 200 && status <= 999 && (!ctype || pier__http_valid_field("Content-Type", ctype));
}

int pier_http_later_send(pier_http_later_t *l, int status, const char *content_type, const void *body,
                         size_t len) {
    int rc = valid_start(status, content_type) ? later_post(l, OP_SEND, status, content_type, body, len, 1)
                                               : -EINVAL;
    /* the handle is gone after this call: if the response could not be posted, the
     * connection must not wait for one that will never come */
    if (rc == -EINVAL || rc == -ENOMEM)
        later_abort(l);
    later_unref(l);
    return rc;
}

int pier_http_later_begin(pier_http_later_t *l, int status, const char *content_type) {
    if (!valid_start(status, content_type))
        return -EINVAL;
    return later_post(l, OP_BEGIN, status, content_type, NULL, 0, 1);
}

int pier_http_later_write(pier_http_later_t *l, const void *data, size_t len) {
    if (!len)
        return 0;
    /* posted - ran: on its way to the loop; conn_queued: queued there, not yet written */
    size_t posted = __atomic_load_n(&l->posted, __ATOMIC_ACQUIRE);
    size_t waiting = posted - __atomic_load_n(&l->ran, __ATOMIC_ACQUIRE) +
                     __atomic_load_n(&l->conn_queued, __ATOMIC_ACQUIRE);
    if (waiting > LATER_MAX_QUEUED)
        return -ENOBUFS;
    __atomic_add_fetch(&l->posted, len, __ATOMIC_ACQ_REL);
    int rc = later_post(l, OP_WRITE, 0, NULL, data, len, 0);
    if (rc < 0)
        __atomic_sub_fetch(&l->posted, len, __ATOMIC_ACQ_REL);
    return rc;
}

int pier_http_later_end(pier_http_later_t *l) {
    int rc = later_post(l, OP_END, 0, NULL, NULL, 0, 1);
    if (rc == -ENOMEM)
        later_abort(l); /* as in pier_http_later_send */
    later_unref(l);
    return rc;
}

void pier_http_later_cancel(pier_http_later_t *l) {
    later_abort(l);
    later_unref(l);
}
