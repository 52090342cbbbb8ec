/* A STAND-IN for a Popcorn-compiled binary (it is not one): it exposes the Popcorn runtime's globals
 * __migrate_gb_variable, regs_dst and tls_dst and, at its "migration point", fills them with fixed, known
 * register values and the aarch64 magic, resets the variable to -1 and raises SIGALRM, as the runtime does.
 * The tests compare the recoded core image against these values.
 *
 * usage: popcorn-standin READY_FILE [MEGABYTES]
 *   writes "ready" to READY_FILE once set up; with MEGABYTES, first dirties that much memory. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define AARCH64_MAGIC 0xAABCBDEADBEAFULL
#define X86_64_MAGIC 0xA8664DEADBEAFULL

struct regset_aarch64 {
    uint64_t magic, sp, pc;
    uint64_t x[31];
    unsigned char v[32][16];
};

volatile long __migrate_gb_variable = -1;
struct regset_aarch64 regs_dst; /* 784 bytes, also large enough for the 624-byte x86_64 set */
uint64_t tls_dst;
volatile unsigned long ticks;

static void on_alarm(int sig) { (void)sig; } /* survive a SIGALRM no tracer swallowed */

static void migration_point(long target) {
    memset(&regs_dst, 0, sizeof regs_dst);
    if (target == 0) { /* aarch64: the values tests/recoder expect (STANDIN_* there) */
        regs_dst.magic = AARCH64_MAGIC;
        regs_dst.sp = 0x0000fffff7ff0000ULL;
        regs_dst.pc = 0x0000000000412340ULL;
        for (int i = 0; i < 31; i++) regs_dst.x[i] = 0x0a64000000000000ULL + (uint64_t)i * 0x0101ULL;
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 16; j++) regs_dst.v[i][j] = (unsigned char)(i * 16 + j);
        tls_dst = 0x0000ffffb7ff8f20ULL;
    } else { /* x86_64: only the magic, enough to be told apart */
        regs_dst.magic = X86_64_MAGIC;
    }
    __migrate_gb_variable = -1;
    raise(SIGALRM);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    signal(SIGALRM, on_alarm);
    if (argc > 2) {
        size_t size = (size_t)atol(argv[2]) << 20;
        volatile unsigned char *mem = malloc(size);
        if (!mem) return 3;
        for (size_t i = 0; i < size; i += 64) mem[i] = (unsigned char)(i >> 12);
    }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "ready\n", 6) != 6) return 4;
    close(fd);
    struct timespec tick = {0, 1000 * 1000};
    for (;;) {
        long target = __migrate_gb_variable;
        if (target != -1) migration_point(target);
        ticks++;
        nanosleep(&tick, NULL);
    }
}
