/* The message client: a pier_client_t that reconnects with backoff, plus framing and a
 * heartbeat. One timer, ticking at a quarter of S, pings after S without sending and
 * closes the connection (so the client reconnects) after 3*S without hearing anything. */
#include <pier/msg.h>

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

struct pier_msg_client_s {
    pier_msg_client_opts_t o;
    pier_msg_codec_t codec;
    pier_loop_t *loop;
    pier_client_t *cl;
    pier_conn_t *c;       /* while connected */
    pier_timer_t hb;
    uint64_t last_rx, last_tx;
    int stopped;
};

static int on_frame(const pier_msg_frame_t *f, void *ud) {
    pier_msg_client_t *mc = ud;
    if (f->id == mc->o.pong_id)
        return 0;
    if (f->id == mc->o.ping_id) {
        /* a pong that cannot be queued now is not worth the connection: the server pings
         * again, and its heartbeat counts what we send it anyway */
        (void)pier_msg_client_send(mc, mc->o.pong_id, NULL, 0);
        return pier_conn_is_open(mc->c) ? 0 : 1;
    }
    if (mc->o.on_msg)
        mc->o.on_msg(mc, f->id, f->body, f->len);
    /* the callback may have stopped us or closed the connection */
    return mc->c && pier_conn_is_open(mc->c) ? 0 : 1;
}

static size_t on_read(pier_conn_t *c, const char *data, size_t len) {
    pier_msg_client_t *mc = pier_conn_data(c);
    mc->last_rx = pier_loop_now(mc->loop);
    size_t used = 0;
    ssize_t r = pier_msg_decode_all(&mc->codec, data, len, &used, on_frame, mc);
    if (r >= 0)
        return used;
    pier_log(PIER_LOG_WARN, "msg-client: bad frame from the server (%s), reconnecting", pier_strerror((int)r));
    pier_conn_abort(c);
    return len;
}

static void on_close(pier_conn_t *c, int err) {
    pier_msg_client_t *mc = pier_conn_data(c);
    if (mc->c == c)
        mc->c = NULL;
    if (mc->o.on_down)
        mc->o.on_down(mc, err);
}

static const pier_conn_cbs_t conn_cbs = {
    .on_read = on_read,
    .on_close = on_close,
};

static void on_connect(pier_client_t *cl, pier_conn_t *c) {
    pier_msg_client_t *mc = pier_client_data(cl);
    pier_conn_set_cbs(c, &conn_cbs, mc);
    mc->c = c;
    mc->last_rx = mc->last_tx = pier_loop_now(mc->loop);
    if (mc->o.on_up)
        mc->o.on_up(mc);
}

static void on_connect_error(pier_client_t *cl, int err, int will_retry) {
    pier_msg_client_t *mc = pier_client_data(cl);
    if (mc->o.on_connect_error)
        mc->o.on_connect_error(mc, err, will_retry);
}

static void hb_cb(pier_timer_t *t) {
    pier_msg_client_t *mc = t->data;
    if (!mc->c || !pier_conn_is_open(mc->c))
        return;
    uint64_t now = pier_loop_now(mc->loop), s = mc->o.heartbeat_ms;
    if (now - mc->last_rx >= 3 * s) {
        pier_log(PIER_LOG_WARN, "msg-client: server silent for %llu ms, reconnecting",
                 (unsigned long long)(now - mc->last_rx));
        pier_conn_abort(mc->c);
        return;
    }
    if (now - mc->last_tx >= s)
        (void)pier_msg_client_send(mc, mc->o.ping_id, NULL, 0); /* if it fails, the next tick retries */
}

int pier_msg_client_new(pier_msg_client_t **out, pier_loop_t *loop, const pier_msg_client_opts_t *opts) {
    pier_msg_client_t *mc = calloc(1, sizeof *mc);
    if (!mc)
        return -ENOMEM;
    mc->o = *opts;
    mc->loop = loop;
    int err = pier_msg_codec_check(&opts->codec, &mc->codec);
    if (err)
        goto fail;
    if (!mc->o.ping_id)
        mc->o.ping_id = PIER_MSG_PING;
    if (!mc->o.pong_id)
        mc->o.pong_id = PIER_MSG_PONG;
    size_t frame_max = pier_msg_hdr_size(&mc->codec) + mc->codec.max_body;
    pier_client_opts_t co = {
        .host = opts->host,
        .port = opts->port,
        .reconnect = 1,
        .backoff_min_ms = opts->backoff_min_ms,
        .backoff_max_ms = opts->backoff_max_ms,
        .max_retries = opts->max_retries,
        .limits = {.read_max = frame_max < (1u << 20) ? 0 : frame_max + 1},
        .tls = opts->tls,
        .tls_servername = opts->tls_servername,
        .on_connect = on_connect,
        .on_connect_error = on_connect_error,
        .data = mc,
    };
    pier_timer_init(loop, &mc->hb, hb_cb, mc);
    if (mc->o.heartbeat_ms) {
        uint64_t tick = mc->o.heartbeat_ms / 4 ? mc->o.heartbeat_ms / 4 : 1;
        pier_timer_start(&mc->hb, tick, tick);
    }
    err = pier_client_new(&mc->cl, loop, &co);
    if (err)
        goto fail;
    *out = mc;
    return 0;
fail:
    pier_timer_stop(&mc->hb);
    free(mc);
    return err;
}

int pier_msg_client_send(pier_msg_client_t *mc, uint16_t id, const void *body, size_t len) {
    if (!mc->c || !pier_conn_is_open(mc->c))
        return -ENOTCONN;
    unsigned char hdr[PIER_MSG_HDR_WIDE];
    ssize_t h = pier_msg_encode_hdr(&mc->codec, id, len, hdr);
    if (h < 0)
        return (int)h;
    /* One unit, queued whole or not at all. -ENOMEM leaves the stream intact and the
     * connection up, so the caller may retry; a frame that went out in part has had its
     * connection aborted by the core, and the client reconnects. */
    struct iovec iov[2] = {{.iov_base = hdr, .iov_len = (size_t)h}, {.iov_base = (void *)body, .iov_len = len}};
    int err = pier_conn_writev(mc->c, iov, len ? 2 : 1);
    if (err)
        return err;
    mc->last_tx = pier_loop_now(mc->loop);
    return 0;
}

int pier_msg_client_up(const pier_msg_client_t *mc) {
    return mc->c && pier_conn_is_open(mc->c);
}

size_t pier_msg_client_queued(const pier_msg_client_t *mc) {
    return mc->c ? pier_conn_queued(mc->c) : 0;
}

void *pier_msg_client_data(const pier_msg_client_t *mc) {
    return mc->o.data;
}

unsigned pier_msg_client_connects(const pier_msg_client_t *mc) {
    return pier_client_connects(mc->cl);
}

void pier_msg_client_stop(pier_msg_client_t *mc) {
    if (mc->stopped)
        return;
    mc->stopped = 1;
    pier_timer_stop(&mc->hb);
    pier_client_stop(mc->cl);
}

int pier_msg_client_free(pier_msg_client_t *mc) {
    if (!mc)
        return 0;
    if (!mc->stopped)
        return -EBUSY;
    int err = pier_client_free(mc->cl);
    if (err)
        return err;
    free(mc);
    return 0;
}
