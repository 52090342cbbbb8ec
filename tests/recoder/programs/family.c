/* Two processes sharing a pipe with unread data, a unix socket pair with queued messages both ways, and an
 * open regular file; used to check that real checkpoints of such a container round-trip byte for byte.
 * usage: family DIR   (writes DIR/state, then prints "ready" on stdout) */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int pipefd[2], sk[2];
    char path[4096];
    if (pipe(pipefd) || socketpair(AF_UNIX, SOCK_STREAM, 0, sk)) return 3;
    snprintf(path, sizeof path, "%s/state", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "family state\n", 13) != 13) return 4;
    if (write(pipefd[1], "data in the pipe", 16) != 16) return 5;
    pid_t child = fork();
    if (child < 0) return 6;
    if (child == 0) {
        if (write(sk[1], "from the child", 14) != 14) return 7;
        for (;;) pause();
    }
    if (write(sk[0], "from the parent", 15) != 15) return 8;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    for (;;) pause();
}
