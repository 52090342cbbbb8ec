/* Appends "N\n" (N = 1, 2, 3, ...) to a file every 10 ms; after a restore the numbers must go on.
 * usage: ticker FILE */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 4;
    struct timespec tick = {0, 10 * 1000 * 1000};
    char line[32];
    for (unsigned long n = 1;; n++) {
        int len = snprintf(line, sizeof line, "%lu\n", n);
        if (write(fd, line, (size_t)len) != len) return 5;
        nanosleep(&tick, NULL);
    }
}
