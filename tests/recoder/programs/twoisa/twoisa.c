/* A two-ISA program, standing in for a Popcorn binary (no Popcorn toolchain here). One source, built for
 * x86_64 and aarch64 with one linker script (twoisa.ld): static, non-PIE, no libc, raw system calls.
 *
 * It counts: every TICK it prints "count N on ISA (pid P, role R)" and appends the same line to OUTFILE. All
 * it needs to go on lives in global memory at the same address in both binaries, so either ISA can continue
 * the computation. Like a Popcorn binary it polls __migrate_gb_variable; when a tracer writes a target ISA
 * there (aarch64 0, x86_64 1), its migration point fills regs_dst / tls_dst for that ISA (pc = resume(), at
 * the same address in both binaries; sp = the top of a static stack), resets the variable to -1 and raises
 * SIGALRM, which the tracer swallows. It then counts on here until it is frozen; a restore on the other ISA
 * enters resume(), which prints "resumed on ISA at count N" and goes on counting.
 *
 * usage: twoisa OUTFILE [CHILDREN [MEGABYTES [stubborn]]]
 *   CHILDREN: processes to fork (each counts with its own role); MEGABYTES: memory to touch first;
 *   stubborn: never look at __migrate_gb_variable (a program that never reaches a migration point).
 *
 * Built with -DTWOISA_REGSET_IN_BSS, regs_dst and tls_dst live in .bss (as a C runtime's plain globals do):
 * anonymous memory, which a lazy dump leaves to post-copy. Otherwise they are in the file-backed .data. */

typedef unsigned long u64;
typedef long i64;

#define AARCH64_MAGIC 0xAABCBDEADBEAFUL
#define X86_64_MAGIC 0xA8664DEADBEAFUL
#define TARGET_AARCH64 0
#define TARGET_X86_64 1
#define SIGALRM 14
#define SIGCHLD 17
#define AT_FDCWD (-100)
#define O_WRONLY 01
#define O_CREAT 0100
#define O_APPEND 02000
#define PROT_RW 3
#define MAP_PRIVATE_ANON 0x22
#define TICK_NS 200000000L

#if defined(__x86_64__)
#define ISA "x86_64"
enum { SYS_write = 1, SYS_close = 3, SYS_mmap = 9, SYS_nanosleep = 35, SYS_getpid = 39, SYS_clone = 56,
       SYS_kill = 62, SYS_exit_group = 231, SYS_openat = 257 };
static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
    register i64 r10 __asm__("r10") = d;
    register i64 r8 __asm__("r8") = e;
    register i64 r9 __asm__("r9") = f;
    i64 ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
__asm__(".text\n.global _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call start\n  hlt\n");
#elif defined(__aarch64__)
#define ISA "aarch64"
enum { SYS_openat = 56, SYS_close = 57, SYS_write = 64, SYS_exit_group = 94, SYS_nanosleep = 101,
       SYS_kill = 129, SYS_getpid = 172, SYS_clone = 220, SYS_mmap = 222 };
static i64 sys6(i64 n, i64 a, i64 b, i64 c, i64 d, i64 e, i64 f) {
    register i64 x8 __asm__("x8") = n;
    register i64 x0 __asm__("x0") = a;
    register i64 x1 __asm__("x1") = b;
    register i64 x2 __asm__("x2") = c;
    register i64 x3 __asm__("x3") = d;
    register i64 x4 __asm__("x4") = e;
    register i64 x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    return x0;
}
__asm__(".text\n.global _start\n_start:\n  mov x0, sp\n  bl start\n  brk #0\n");
#else
#error "x86_64 or aarch64 only"
#endif

#define sys3(n, a, b, c) sys6((n), (i64)(a), (i64)(b), (i64)(c), 0, 0, 0)
#define AT(name) __attribute__((section(name), used))

/* The Popcorn runtime's globals (CRIU-IMAGES.md section 7). */
#ifdef TWOISA_REGSET_IN_BSS
#define REGSET_AT(data, bss) AT(bss)
#else
#define REGSET_AT(data, bss) AT(data)
#endif
volatile i64 __migrate_gb_variable AT(".twoisa_migrate") = -1;
u64 tls_dst REGSET_AT(".twoisa_tls", ".twoisa_bss_tls") = 0;
struct regset {
    u64 words[98]; /* 784 bytes: aarch64 magic, sp, pc, x0..x30, v0..v31; x86_64's 624 fit inside */
} regs_dst REGSET_AT(".twoisa_regs", ".twoisa_bss_regs") = {{0}};

/* What the computation needs to go on, on either ISA: no pointers into code or read-only data. */
struct state {
    i64 count;
    i64 role;       /* 0: the first process, 1..: forked children */
    i64 stubborn;
    i64 resumes;    /* how many times resume() ran */
    char out[256];  /* OUTFILE */
} state AT(".twoisa_state") = {0, 0, 0, 0, {0}};

static unsigned char resume_stack[32768] AT(".twoisa_stack") __attribute__((aligned(16)));

void *memset(void *dst, int c, u64 n) {
    volatile unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

static u64 length(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static char *put(char *at, const char *s) {
    while (*s) *at++ = *s++;
    return at;
}

static char *put_number(char *at, i64 v) {
    char digits[24];
    int n = 0;
    if (v < 0) { *at++ = '-'; v = -v; }
    do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) *at++ = digits[--n];
    return at;
}

static void say(const char *line, u64 len) {
    sys3(SYS_write, 1, line, len);
    i64 fd = sys6(SYS_openat, AT_FDCWD, (i64)state.out, O_WRONLY | O_CREAT | O_APPEND, 0644, 0, 0);
    if (fd >= 0) {
        sys3(SYS_write, fd, line, len);
        sys3(SYS_close, fd, 0, 0);
    }
}

static void tell(const char *what, i64 count) {
    char line[128];
    char *at = put(line, what);
    at = put_number(at, count);
    at = put(at, " on " ISA " (pid ");
    at = put_number(at, sys3(SYS_getpid, 0, 0, 0));
    at = put(at, ", role ");
    at = put_number(at, state.role);
    at = put(at, ")\n");
    say(line, (u64)(at - line));
}

void resume(void);

static void migration_point(i64 target) {
    u64 top = (u64)(resume_stack + sizeof resume_stack);
    memset(&regs_dst, 0, sizeof regs_dst);
    if (target == TARGET_AARCH64) {
        regs_dst.words[0] = AARCH64_MAGIC;
        regs_dst.words[1] = top;         /* sp */
        regs_dst.words[2] = (u64)resume; /* pc */
    } else {
        regs_dst.words[0] = X86_64_MAGIC;
        regs_dst.words[1] = (u64)resume; /* rip */
        regs_dst.words[9] = top - 8;     /* rsp, as after a call: the ABI's alignment at a function entry */
    }
    tls_dst = 0;
    __migrate_gb_variable = -1;
    sys3(SYS_kill, sys3(SYS_getpid, 0, 0, 0), SIGALRM, 0); /* the tracer's cue; it swallows the signal */
}

static void __attribute__((noreturn)) count_forever(void) {
    for (;;) {
        if (!state.stubborn) {
            i64 target = __migrate_gb_variable;
            if (target != -1) migration_point(target);
        }
        /* Told first, stored after: frozen in between, the other ISA tells this number again rather than
         * skip it. */
        i64 next = state.count + 1;
        tell("count ", next);
        state.count = next;
        i64 tick[2] = {0, TICK_NS};
        sys3(SYS_nanosleep, tick, 0, 0);
    }
}

/* Entered with only sp and pc set, on a static stack; everything else comes from global memory. */
void __attribute__((section(".twoisa_resume"), noreturn, used)) resume(void) {
    state.resumes++;
    tell("resumed at count ", state.count);
    count_forever();
}

static i64 number(const char *s) {
    i64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}

void __attribute__((noreturn, used)) start(u64 *sp) {
    i64 argc = (i64)sp[0];
    char **argv = (char **)(sp + 1);
    if (argc < 2 || length(argv[1]) >= sizeof state.out) {
        static const char usage[] = "usage: twoisa OUTFILE [CHILDREN [MEGABYTES [stubborn]]]\n";
        sys3(SYS_write, 2, usage, sizeof usage - 1);
        sys3(SYS_exit_group, 2, 0, 0);
    }
    put(state.out, argv[1]);
    i64 children = argc > 2 ? number(argv[2]) : 0;
    i64 megabytes = argc > 3 ? number(argv[3]) : 0;
    state.stubborn = argc > 4;
    if (megabytes > 0) {
        u64 size = (u64)megabytes << 20;
        volatile unsigned char *mem =
            (volatile unsigned char *)sys6(SYS_mmap, 0, (i64)size, PROT_RW, MAP_PRIVATE_ANON, -1, 0);
        if ((i64)mem < 0 && (i64)mem > -4096) sys3(SYS_exit_group, 3, 0, 0);
        for (u64 i = 0; i < size; i += 4096) mem[i] = (unsigned char)(i >> 12 | 1);
    }
    tell("started at count ", state.count);
    for (i64 role = 1; role <= children; role++) {
        if (sys3(SYS_clone, SIGCHLD, 0, 0) == 0) {
            state.role = role;
            break;
        }
    }
    count_forever();
}
