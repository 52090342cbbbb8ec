/* The readout's window (agent/guest_window.py): a reader blocked in read(2) on its stdin, a sleeper in a long
 * nanosleep, and the main thread waiting for the reader: nothing ends by itself while it is read out. The reader
 * says what each read returned. Built static: it runs under the device's qemu-x86_64 outside any container. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static void *reader(void *arg) {
    char buf[64];
    (void)arg;
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);  /* 63 bytes: the probe tells this read by its arguments */
        if (n <= 0) {
            printf("read %zd\n", n);
            fflush(stdout);
            return 0;
        }
        buf[n] = 0;
        printf("got %zd: %s\n", n, buf);
        fflush(stdout);
    }
}

static void *sleeper(void *arg) {
    struct timespec ts = {30, 0};
    (void)arg;
    for (;;) {
        nanosleep(&ts, 0);
        printf("slept\n");
        fflush(stdout);
    }
}

int main(void) {
    pthread_t t, u;
    pthread_create(&t, 0, reader, 0);
    pthread_create(&u, 0, sleeper, 0);
    pthread_join(t, 0);
    return 0;
}
