/* A fixed compute loop for the emulation benchmark: integer arithmetic, a table lookup and a branch per step,
   no syscalls in the loop. Built static for x86_64 (run under the device's qemu-x86_64) and for aarch64 (run
   natively there); prints the steps, a checksum (equal on both ISAs) and its own seconds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    uint64_t steps = argc > 1 ? strtoull(argv[1], NULL, 10) : 50000000ULL;
    static uint32_t table[4096];
    for (uint32_t i = 0; i < 4096; i++) table[i] = i * 2654435761U;
    uint64_t x = 88172645463325252ULL, sum = 0;
    double start = now();
    for (uint64_t i = 0; i < steps; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        sum += table[x & 4095] ^ (uint32_t)(x >> 32);
        if (sum & 1) sum = sum * 3 + 1; else sum >>= 1;
    }
    printf("steps %llu sum %016llx seconds %.6f\n", (unsigned long long)steps, (unsigned long long)sum,
           now() - start);
    return 0;
}
