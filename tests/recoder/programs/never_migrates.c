/* Has the Popcorn runtime's variable but never looks at it: a notify must time out and leave it at -1.
 * usage: never READY_FILE */
#include <fcntl.h>
#include <unistd.h>

volatile long __migrate_gb_variable = -1;

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "ready\n", 6) != 6) return 4;
    close(fd);
    for (;;) pause();
}
