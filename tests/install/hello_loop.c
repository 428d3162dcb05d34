/* The smallest user of an installed pier: the umbrella header (so every installed public
 * header must be there and compile on its own), then a loop created and freed. */
#include <pier/pier.h>

#include <stdio.h>

int main(void) {
    pier_loop_t *loop;
    int err = pier_loop_new(&loop);
    if (err < 0) {
        fprintf(stderr, "pier_loop_new: %s\n", pier_strerror(err));
        return 1;
    }
    if ((err = pier_loop_free(loop)) < 0) {
        fprintf(stderr, "pier_loop_free: %s\n", pier_strerror(err));
        return 1;
    }
    puts("loop created and freed");
    return 0;
}
