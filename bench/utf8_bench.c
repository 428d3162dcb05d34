/* UTF-8 validator micro-benchmark (the WebSocket layer's check of every text message):
 * GB/s on ASCII, on mixed text (Latin-1 letters and a CJK character among ASCII), and on
 * text of three-byte characters only, for a 64-byte message and a 1 MiB one. Also the
 * unmasking of a payload, which every received byte goes through first. Built by hand:
 *
 *   gcc -O3 -D_GNU_SOURCE -Isrc -Iinclude bench/utf8_bench.c src/ws/utf8.c src/ws/frame.c -o /tmp/utf8_bench
 *   taskset -c 1 /tmp/utf8_bench
 *
 * Prints GB/s, best of 5 runs of about 0.2 s each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ws/ws_int.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(uint8_t *b, size_t n, int kind) {
    static const char *mixed[] = {"hello ", "caf\xc3\xa9 ", "\xe6\x97\xa5 ", "world "};
    size_t i = 0, k = 0;
    while (i < n) {
        const char *piece = kind == 0 ? "abcdefgh" : kind == 1 ? mixed[k++ % 4] : "\xe6\x97\xa5";
        size_t pl = strlen(piece);
        if (i + pl > n) {
            memset(b + i, 'x', n - i);
            break;
        }
        memcpy(b + i, piece, pl);
        i += pl;
    }
}

static volatile uint32_t sink;

static double run(const uint8_t *b, size_t n, int unmask) {
    static uint8_t out[1 << 20];
    const uint8_t mask[4] = {1, 2, 3, 4};
    double best = 0;
    for (int r = 0; r < 5; r++) {
        size_t iters = (200u << 20) / n, total = 0;
        double t0 = now_s();
        for (size_t i = 0; i < iters; i++) {
            if (unmask)
                pier__ws_unmask(out, b, n, mask, i);
            else
                sink += pier__utf8_feed(PIER__UTF8_ACCEPT, b, n);
            total += n;
        }
        double gbs = total / (now_s() - t0) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    return best;
}

int main(void) {
    static uint8_t buf[1 << 20];
    static const char *names[] = {"ascii", "mixed", "3-byte"};
    static const size_t sizes[] = {64, 1 << 20};
    for (int kind = 0; kind < 3; kind++)
        for (int s = 0; s < 2; s++) {
            fill(buf, sizes[s], kind);
            if (!pier__utf8_valid(buf, sizes[s]))
                return 1;
            printf("utf8 %-7s %8zu B  %6.2f GB/s\n", names[kind], sizes[s], run(buf, sizes[s], 0));
        }
    for (int s = 0; s < 2; s++)
        printf("unmask        %8zu B  %6.2f GB/s\n", sizes[s], run(buf, sizes[s], 1));
    return sink == 12345 ? 2 : 0;
}
