/* Test program for the androcond test bed: counts up every 100 ms on stdout.
 * Static, so the test image needs no libc. After a checkpoint and restore the count must continue.
 * `counter MB` first allocates and touches MB megabytes, so a checkpoint carries that much memory;
 * each count line then also carries a checksum of that memory, which must survive the move.
 * `counter MB EVERY` reads that memory for the checksum only every EVERY counts (the others print the count
 * alone): a process whose working set is small, as post-copy's benchmark needs one. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    struct timespec tick = {0, 100 * 1000 * 1000};
    unsigned long size = argc > 1 ? strtoul(argv[1], NULL, 10) << 20 : 0;
    unsigned long every = argc > 2 ? strtoul(argv[2], NULL, 10) : 1;
    unsigned char *mem = size ? malloc(size) : NULL;
    unsigned long sum = 0;
    if (size && !mem) return 1;
    for (unsigned long i = 0; i < size; i++) {
        mem[i] = (unsigned char)(i * 2654435761u >> 13);
        sum += mem[i];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 1;; n++) {
        if (size && every && n % every == 1 % every) {
            unsigned long check = 0;
            for (unsigned long i = 0; i < size; i += 4096) check += mem[i];
            printf("count %lu sum %lu check %lu\n", n, sum, check);
        } else {
            printf("count %lu\n", n);
        }
        nanosleep(&tick, NULL);
    }
}
