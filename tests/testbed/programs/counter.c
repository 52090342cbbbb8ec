/* Test program for the androcond test bed: counts up every 100 ms on stdout.
 * Static, so the test image needs no libc. After a checkpoint and restore the count must continue. */
#include <stdio.h>
#include <time.h>

int main(void) {
    struct timespec tick = {0, 100 * 1000 * 1000};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 1;; n++) {
        printf("count %lu\n", n);
        nanosleep(&tick, NULL);
    }
}
