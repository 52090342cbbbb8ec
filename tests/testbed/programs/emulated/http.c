/* For the emulated move: an HTTP server on port 8080 that keeps its state in memory. Every answer is
   "hits N token T": N counts the requests it has answered (so a restart shows as hits 1 again), T is drawn once
   at start-up. One thread, one listening socket, one connection at a time. Its signal state, which a move must
   carry: SIGUSR1 runs a handler that writes "signal usr1" (accept restarts after it), SIGUSR2 is blocked. */
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void on_usr1(int signo) {
    static const char line[] = "signal usr1\n";
    (void)signo;
    if (write(1, line, sizeof line - 1) < 0) _exit(3);
}

int main(void) {
    struct sigaction action = {0};
    action.sa_handler = on_usr1;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &action, NULL);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);
    unsigned long token = (unsigned long)time(NULL) * 2654435761UL ^ (unsigned long)getpid();
    int one = 1;
    int server = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(8080), .sin_addr.s_addr = INADDR_ANY};
    if (server < 0 || setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(server, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(server, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("serving token %lx\n", token);
    fflush(stdout);
    for (unsigned long hits = 1;; hits++) {
        int client = accept(server, NULL, NULL);
        if (client < 0) { hits--; continue; }
        char request[2048];
        (void)read(client, request, sizeof request);
        char body[64], answer[256];
        int length = snprintf(body, sizeof body, "hits %lu token %lx\n", hits, token);
        int total = snprintf(answer, sizeof answer,
                             "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
                             length, body);
        (void)write(client, answer, (size_t)total);
        close(client);
        printf("answered %lu\n", hits);
        fflush(stdout);
    }
}
