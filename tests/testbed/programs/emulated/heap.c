/* For the emulated move: a dynamically linked program with two threads and a 64 MB heap (or as many MB as its
   argument says). Role 0 (the main thread) prints its count and the heap's checksum; role 1 (a second thread) its count and the checksum of its
   own stack buffer. Every line is "count N role R sum S"; a move that lost or changed memory shows in S, one
   that restarted the program shows as count 1 again.
   Its signal masks, which a move must carry: SIGUSR2 is blocked in both threads, SIGUSR1 in the second. */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t heap_words = (size_t)64 << 20 >> 3;
static uint64_t *heap;

static uint64_t checksum(const uint64_t *words, size_t n) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) sum = sum * 1099511628211ULL + words[i];
    return sum;
}

static void tick(void) {
    struct timespec pause = {0, 250 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static void *second(void *arg) {
    (void)arg;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    uint64_t own[512];
    for (size_t i = 0; i < 512; i++) own[i] = i * 2654435761ULL;
    for (unsigned long n = 1;; n++) {
        printf("count %lu role 1 sum %016llx\n", n, (unsigned long long)checksum(own, 512));
        fflush(stdout);
        tick();
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) heap_words = (size_t)strtoul(argv[1], NULL, 10) << 20 >> 3;
    heap = malloc(heap_words * sizeof *heap);
    if (heap == NULL) return 1;
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < heap_words; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        heap[i] = x;
    }
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, NULL);  /* before the second thread starts: it inherits the mask */
    pthread_t thread;
    if (pthread_create(&thread, NULL, second, NULL) != 0) return 2;
    for (unsigned long n = 1;; n++) {
        printf("count %lu role 0 sum %016llx\n", n, (unsigned long long)checksum(heap, heap_words));
        fflush(stdout);
        tick();
    }
}
