/*
 * androcond restorer: resume an x86_64 process dumped by CRIU, from a plan made by plan.py.
 *
 * Runs as `restorer PLAN` natively or as `qemu-x86_64 restorer PLAN` (user-mode emulation, where CRIU itself
 * cannot restore: it needs ptrace and parasite code). No libc: raw syscalls only, so that nothing of ours
 * (TLS, atexit, a heap) is left behind in the process we become. Linked at 0x10000, below anything a dump
 * uses, and non-PIE so that qemu picks guest_base 0 (guest addresses are host addresses).
 *
 * Order of work: read the plan, move it to a scratch area no dumped mapping uses, refuse overlaps with what is
 * mapped now (/proc/thread-self/maps, which qemu 7.2 does not filter: the emulator's own memory is listed),
 * map every VMA, fill the dumped pages from pages-N.img, set protections, reopen fds, chdir, signal actions,
 * report on the status FIFO, and jump to a trampoline page that clones the other threads and rt_sigreturns
 * each thread into its dumped registers. The format of the plan is described in docs/emulation.md.
 *
 * Build: cc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -O2
 *        -Wl,-Ttext-segment=0x10000 -o restorer restorer.c   (build.py does this)
 */

typedef unsigned long u64;
typedef long s64;
typedef unsigned int u32;
typedef int s32;
typedef unsigned short u16;
typedef unsigned char u8;

#define PAGE 4096UL
#define PAGE_DOWN(x) ((x) & ~(PAGE - 1))
#define PAGE_UP(x) (((x) + PAGE - 1) & ~(PAGE - 1))

/* x86_64 syscall numbers */
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_fstat 5
#define SYS_lseek 8
#define SYS_mmap 9
#define SYS_mprotect 10
#define SYS_munmap 11
#define SYS_rt_sigaction 13
#define SYS_rt_sigprocmask 14
#define SYS_rt_sigreturn 15
#define SYS_pread64 17
#define SYS_dup2 33
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_bind 49
#define SYS_listen 50
#define SYS_getsockname 51
#define SYS_setsockopt 54
#define SYS_clone 56
#define SYS_exit_group 231
#define SYS_fcntl 72
#define SYS_chdir 80
#define SYS_arch_prctl 158
#define SYS_gettid 186
#define SYS_getdents64 217
#define SYS_set_tid_address 218
#define SYS_set_robust_list 273

#define O_RDONLY 0
#define O_WRONLY 1
#define O_RDWR 2
#define O_ACCMODE 3
#define O_CREAT 0100
#define O_EXCL 0200
#define O_NOCTTY 0400
#define O_TRUNC 01000
#define O_NONBLOCK 04000
#define O_CLOEXEC 02000000
#define O_DIRECTORY 0200000

#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define MAP_FIXED_NOREPLACE 0x100000

#define F_GETFD 1
#define F_SETFD 2
#define F_SETFL 4
#define F_DUPFD_CLOEXEC 1030
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define IPPROTO_IPV6 41
#define IPV6_V6ONLY 26
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define EBADF 9
#define SIG_SETMASK 2

/* Exit codes: 2xx so that the container visibly dies of a failed restore. */
#define EXIT_USAGE 200
#define EXIT_OVERLAP 201
#define EXIT_MMAP 202
#define EXIT_PAGES 203
#define EXIT_FDS 204
#define EXIT_SIGNALS 205
#define EXIT_THREADS 206

/* ---- the plan (little-endian; see docs/emulation.md) ---- */
#define PLAN_MAGIC "ACDPLAN\0"
#define PLAN_VERSION 2

enum record_type {
    R_END = 0,
    R_STATUS = 1,   /* status FIFO path */
    R_PAGES_FILE = 2, /* pages-N.img path */
    R_CWD = 3,      /* working directory path */
    R_VMA = 4,
    R_PAGES = 5,
    R_FD = 6,
    R_SIGACTION = 7,
    R_THREAD = 8,
    R_STUB = 9,     /* the emulator's gdb stub socket path: its fd is moved out of the dumped fds' way */
};

struct plan_header {
    char magic[8];
    u32 version;
    u32 size; /* whole plan, header included */
};

struct record {
    u32 type;
    u32 size; /* payload bytes, a multiple of 8 */
};

enum vma_kind { VMA_ANON = 0, VMA_FILE_PRIVATE = 1, VMA_FILE_SHARED = 2, VMA_VDSO = 3, VMA_VVAR = 4 };

struct vma_rec {
    u64 start, end, pgoff;
    u32 prot, kind;
    u32 open_flags, pad;
    char path[]; /* NUL-terminated (files only) */
};

struct pages_rec {
    u64 addr, len, offset; /* offset in pages-N.img */
};

enum fd_kind { FD_FILE = 1, FD_LISTEN = 2, FD_SOCKET = 3, FD_BOUND = 4 };

struct fd_rec {
    s32 fd;
    u32 kind;
    u32 flags;   /* file status flags (open flags) */
    u32 fdflags; /* FD_CLOEXEC */
    u64 pos;
    u32 family, type, proto, port; /* port in host order */
    u32 backlog, v6only;
    u8 addr[16]; /* network order, as in the socket address */
    char path[]; /* files only */
};

struct sigaction_rec {
    u32 signo, pad;
    u64 handler, flags, restorer, mask;
};

/* General registers in struct sigcontext order, so they are copied as one block. */
struct gpregs {
    u64 r8, r9, r10, r11, r12, r13, r14, r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
};

struct thread_rec {
    u32 tid, main;
    u64 clear_tid, sigmask, fs_base, gs_base, futex_rla, futex_rla_len;
    u64 tid_addr; /* where its libc keeps its TID (glibc: clear_tid; musl: in its descriptor), 0: unknown */
    struct gpregs regs;
    u8 fxsave[512];
};

/* ---- kernel structures of the rt_sigreturn frame (arch/x86/include/uapi/asm/sigcontext.h) ---- */
struct sigcontext64 {
    struct gpregs regs;
    u16 cs, gs, fs, ss;
    u64 err, trapno, oldmask, cr2;
    u64 fpstate; /* pointer to the FXSAVE image */
    u64 reserved1[8];
};

struct ucontext64 {
    u64 uc_flags;
    u64 uc_link;
    u64 ss_sp;
    s32 ss_flags, ss_pad;
    u64 ss_size;
    struct sigcontext64 mc;
    u64 sigmask;
};

struct rt_sigframe64 {
    u64 pretcode; /* rt_sigreturn finds the frame at rsp - 8 */
    struct ucontext64 uc;
    u8 info[128];
};

_Static_assert(sizeof(struct sigcontext64) == 256, "sigcontext layout");
_Static_assert(sizeof(struct ucontext64) == 304, "ucontext layout");
_Static_assert(sizeof(struct thread_rec) == 720, "thread record layout");
_Static_assert(sizeof(struct fd_rec) == 64, "fd record layout");
_Static_assert(sizeof(struct vma_rec) == 40, "vma record layout");

/* ---- the trampoline page ---- */
/*
 * Per thread, in the trampoline area, one page: [futex_rla, futex_rla_len] then the rt_sigframe, then a
 * 64-byte-aligned FXSAVE image. A whole page because qemu 10 (its CPU has XSAVE) reads an XSAVE-sized area at
 * fpstate, not just the 512 bytes: a frame near the end of the mapping made its rt_sigreturn fail (SIGSEGV). A cloned child starts with rsp = frame + 8 and runs only trampoline code: it sets its robust
 * futex list from the two words below its frame and calls rt_sigreturn. It never touches restorer code, which
 * the main thread unmaps meanwhile.
 */
#define SLOT_SIZE 4096
#define SLOT_FRAME 16
#define SLOT_FXSAVE 512

struct clone_args_rec {
    u64 flags, newsp, ptid, ctid, tls;
};

struct tramp_args {
    u64 nclones;    /* 0 */
    u64 unmap_addr; /* 8: the restorer's image */
    u64 unmap_len;  /* 16 */
    u64 main_rsp;   /* 24: main thread's frame + 8 */
    u64 pad[4];
    struct clone_args_rec clones[]; /* 64 */
};

#define CLONE_THREAD_FLAGS 0x50f00UL /* VM|FS|FILES|SIGHAND|THREAD|SYSVSEM, what glibc and qemu expect */
#define CLONE_SETTLS 0x80000UL
#define CLONE_PARENT_SETTID 0x100000UL
#define CLONE_CHILD_CLEARTID 0x200000UL

/* Position-independent: copied onto the trampoline page and entered with rdi = struct tramp_args *. */
extern const u8 tramp_start[], tramp_end[];
__asm__(
    ".text\n"
    ".globl tramp_start\n"
    "tramp_start:\n"
    "    mov %rdi, %rbx\n"          /* rbx, r12, r13 survive syscalls */
    "    mov 0(%rbx), %r12\n"
    "    lea 64(%rbx), %r13\n"
    "1:  test %r12, %r12\n"
    "    jz 3f\n"
    "    mov $56, %eax\n"           /* clone(flags, newsp, ptid, ctid, tls) */
    "    mov 0(%r13), %rdi\n"
    "    mov 8(%r13), %rsi\n"
    "    mov 16(%r13), %rdx\n"
    "    mov 24(%r13), %r10\n"
    "    mov 32(%r13), %r8\n"
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jz 2f\n"
    "    js 9f\n"
    "    add $40, %r13\n"
    "    dec %r12\n"
    "    jmp 1b\n"
    "2:  mov -24(%rsp), %rdi\n"     /* child: set_robust_list(rla, len), then into its registers */
    "    mov -16(%rsp), %rsi\n"
    "    mov $273, %eax\n"
    "    syscall\n"
    "    mov $15, %eax\n"
    "    syscall\n"
    "    ud2\n"
    "3:  mov $11, %eax\n"           /* main: munmap(restorer image); the children run only this page */
    "    mov 8(%rbx), %rdi\n"
    "    mov 16(%rbx), %rsi\n"
    "    syscall\n"
    "    mov 24(%rbx), %rsp\n"
    "    mov $15, %eax\n"
    "    syscall\n"
    "    ud2\n"
    "9:  mov $206, %edi\n"          /* a clone failed after the status was sent: die visibly */
    "    mov $231, %eax\n"
    "    syscall\n"
    "    ud2\n"
    ".globl tramp_end\n"
    "tramp_end:\n");

/* ---- syscalls ---- */
static inline s64 sys6(s64 n, s64 a, s64 b, s64 c, s64 d, s64 e, s64 f)
{
    register s64 r10 __asm__("r10") = d;
    register s64 r8 __asm__("r8") = e;
    register s64 r9 __asm__("r9") = f;
    s64 ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define SYS(n, a, b, c, d, e, f) sys6((n), (s64)(a), (s64)(b), (s64)(c), (s64)(d), (s64)(e), (s64)(f))
#define sys1(n, a) SYS(n, a, 0, 0, 0, 0, 0)
#define sys2(n, a, b) SYS(n, a, b, 0, 0, 0, 0)
#define sys3(n, a, b, c) SYS(n, a, b, c, 0, 0, 0)
#define sys4(n, a, b, c, d) SYS(n, a, b, c, d, 0, 0)
#define sys5(n, a, b, c, d, e) SYS(n, a, b, c, d, e, 0)

/* gcc may emit calls to these even with -ffreestanding */
void *memset(void *d, int c, u64 n)
{
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, u64 n)
{
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

static u64 slen(const char *s)
{
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

/* ---- messages: stderr for people, the status FIFO for the device agent ---- */
static const char *status_path;

static void put(int fd, const char *s) { sys3(SYS_write, fd, s, slen(s)); }

static char *fmt_u(char *p, u64 v, int base)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % (u64)base];
        v /= (u64)base;
    } while (v);
    if (base == 16) *p++ = '0', *p++ = 'x';
    while (n) *p++ = tmp[--n];
    return p;
}

static char *fmt_s(char *p, const char *s)
{
    while (*s) *p++ = *s++;
    return p;
}

/* The status line goes to a FIFO the agent reads: never block, never create; no reader means no report. */
static void report_status(const char *line)
{
    if (!status_path) return;
    s64 fd = sys3(SYS_open, status_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0);
    if (fd < 0) return;
    put((int)fd, line);
    sys1(SYS_close, fd);
}

/* "error: <what> <errno>" on the status FIFO, the same with detail on stderr, and exit(code). */
__attribute__((noreturn)) static void fail(int code, const char *what, const char *detail, u64 value, s64 err)
{
    char line[512], *p = line;
    u64 e = err < 0 ? (u64)-err : (u64)err;
    p = fmt_s(p, "error: ");
    p = fmt_s(p, what);
    *p++ = ' ';
    p = fmt_u(p, e, 10);
    *p++ = '\n';
    *p = 0;
    report_status(line);
    p = line;
    p = fmt_s(p, "androcond-restorer: ");
    p = fmt_s(p, what);
    if (detail) {
        *p++ = ' ';
        u64 room = 300;
        while (*detail && room--) *p++ = *detail++;
    }
    if (value) {
        *p++ = ' ';
        p = fmt_u(p, value, 16);
    }
    p = fmt_s(p, " (errno ");
    p = fmt_u(p, e, 10);
    p = fmt_s(p, ")\n");
    *p = 0;
    put(2, line);
    sys1(SYS_exit_group, code);
    for (;;) {
    }
}

/* ---- memory layout checks ---- */
struct range {
    u64 start, end;
};

static char maps_buf[256 * 1024];
static struct range current[4096];
static int ncurrent;

static u64 parse_hex(const char **s)
{
    u64 v = 0;
    for (;;) {
        char c = **s;
        if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
        else break;
        (*s)++;
    }
    return v;
}

/* What is mapped now, host view: under qemu 7.2 /proc/thread-self/maps lists qemu's own memory too. */
static void read_maps(void)
{
    s64 fd = sys3(SYS_open, "/proc/thread-self/maps", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) fail(EXIT_OVERLAP, "open-maps", "/proc/thread-self/maps", 0, fd);
    u64 got = 0;
    for (;;) {
        if (got >= sizeof(maps_buf) - 1) fail(EXIT_OVERLAP, "read-maps", "too many mappings", 0, 0);
        s64 n = sys3(SYS_read, fd, maps_buf + got, sizeof(maps_buf) - 1 - got);
        if (n < 0) fail(EXIT_OVERLAP, "read-maps", "/proc/thread-self/maps", 0, n);
        if (n == 0) break;
        got += (u64)n;
    }
    sys1(SYS_close, fd);
    maps_buf[got] = 0;
    ncurrent = 0;
    const char *s = maps_buf;
    while (*s) {
        if (ncurrent == (int)(sizeof(current) / sizeof(current[0])))
            fail(EXIT_OVERLAP, "read-maps", "too many mappings", 0, 0);
        current[ncurrent].start = parse_hex(&s);
        if (*s == '-') s++;
        current[ncurrent].end = parse_hex(&s);
        ncurrent++;
        while (*s && *s != '\n') s++;
        if (*s) s++;
    }
}

static int overlaps_current(u64 start, u64 end, struct range *hit)
{
    for (int i = 0; i < ncurrent; i++)
        if (current[i].start < end && start < current[i].end) {
            *hit = current[i];
            return 1;
        }
    return 0;
}

static int mapped_now(u64 addr)
{
    for (int i = 0; i < ncurrent; i++)
        if (current[i].start <= addr && addr < current[i].end) return 1;
    return 0;
}

/* ---- plan walking ---- */
static const u8 *plan;
static u64 plan_size;

#define FOR_RECORDS(r, payload)                                                                                  \
    for (const struct record *r = (const struct record *)(plan + sizeof(struct plan_header));                    \
         (const u8 *)r + sizeof(struct record) <= plan + plan_size && r->type != R_END;                          \
         r = (const struct record *)((const u8 *)r + sizeof(struct record) + r->size))                            \
        for (const void *payload = (const u8 *)r + sizeof(struct record); payload; payload = 0)

static int overlaps_dump(u64 start, u64 end)
{
    FOR_RECORDS(r, p)
    {
        if (r->type != R_VMA) continue;
        const struct vma_rec *v = p;
        if (v->start < end && start < v->end) return 1;
    }
    return 0;
}

/* mmap that must land exactly at `addr`: NOREPLACE is only a hint in qemu 7.2, so the result is checked. */
static s64 map_exact(u64 addr, u64 len, int prot, int flags, s64 fd, u64 off)
{
    s64 r = SYS(SYS_mmap, addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
    if (r < 0 && r > -4096) return r;
    if ((u64)r != addr) {
        sys2(SYS_munmap, r, len); /* ours, just made elsewhere: safe to drop */
        return -17;               /* EEXIST */
    }
    return r;
}

/* A free range for the plan copy and the trampoline: clear of every dumped VMA and of what is mapped now. */
static u64 find_scratch(u64 len)
{
    for (u64 a = 0x100000000UL; a < 0x7f0000000000UL; a += 0x40000000UL) {
        struct range hit;
        if (!overlaps_dump(a, a + len) && !overlaps_current(a, a + len, &hit)) return a;
    }
    fail(EXIT_MMAP, "scratch", "no free range for the trampoline", len, 12);
}

/* ---- the restore steps ---- */
static void load_plan(const char *path)
{
    s64 fd = sys3(SYS_open, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) fail(EXIT_USAGE, "open-plan", path, 0, fd);
    struct plan_header h;
    s64 n = SYS(SYS_pread64, fd, &h, sizeof(h), 0, 0, 0);
    if (n != (s64)sizeof(h)) fail(EXIT_USAGE, "read-plan", path, 0, n < 0 ? n : 5);
    for (int i = 0; i < 8; i++)
        if (h.magic[i] != PLAN_MAGIC[i]) fail(EXIT_USAGE, "plan-magic", path, 0, 22);
    if (h.version != PLAN_VERSION) fail(EXIT_USAGE, "plan-version", path, h.version, 22);
    plan_size = h.size;
    s64 m = SYS(SYS_mmap, 0, PAGE_UP(plan_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (m < 0 && m > -4096) fail(EXIT_USAGE, "map-plan", path, 0, m);
    sys1(SYS_close, fd);
    plan = (const u8 *)m;
}

static const char *find_string(u32 type)
{
    FOR_RECORDS(r, p)
    {
        if (r->type == type) return (const char *)p;
    }
    return 0;
}

static void check_layout(void)
{
    FOR_RECORDS(r, p)
    {
        if (r->type != R_VMA) continue;
        const struct vma_rec *v = p;
        struct range hit;
        if (overlaps_current(v->start, v->end, &hit)) {
            char d[160], *q = d;
            q = fmt_s(q, "dumped ");
            q = fmt_u(q, v->start, 16);
            *q++ = '-';
            q = fmt_u(q, v->end, 16);
            q = fmt_s(q, " overlaps the emulator's or restorer's ");
            q = fmt_u(q, hit.start, 16);
            *q++ = '-';
            q = fmt_u(q, hit.end, 16);
            *q = 0;
            fail(EXIT_OVERLAP, "vma-overlap", d, 0, 17);
        }
    }
}

static void map_vmas(void)
{
    FOR_RECORDS(r, p)
    {
        if (r->type != R_VMA) continue;
        const struct vma_rec *v = p;
        u64 len = v->end - v->start;
        s64 res;
        if (v->kind == VMA_FILE_PRIVATE || v->kind == VMA_FILE_SHARED) {
            int shared = v->kind == VMA_FILE_SHARED;
            s64 fd = sys3(SYS_open, v->path, (shared ? (s64)(v->open_flags & O_ACCMODE) : O_RDONLY) | O_CLOEXEC, 0);
            if (fd < 0) fail(EXIT_MMAP, "open-mapped-file", v->path, 0, fd);
            /* Writable for now so the dumped (copied-on-write) pages can be filled in. */
            int prot = shared ? (int)v->prot : PROT_READ | PROT_WRITE;
            res = map_exact(v->start, len, prot, shared ? MAP_SHARED : MAP_PRIVATE, fd, v->pgoff);
            sys1(SYS_close, fd);
            if (res < 0) fail(EXIT_MMAP, "mmap-file", v->path, v->start, res);
        } else {
            /* Anonymous memory, [vdso] as plain memory, [vvar] as zero pages: the dumped vDSO then sees no
             * clock data and falls back to real syscalls, which work natively and under qemu. */
            res = map_exact(v->start, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (res < 0) fail(EXIT_MMAP, "mmap-anon", 0, v->start, res);
        }
    }
}

static void fill_pages(const char *pages_path)
{
    s64 fd = -1;
    FOR_RECORDS(r, p)
    {
        if (r->type != R_PAGES) continue;
        const struct pages_rec *pg = p;
        if (fd < 0) {
            fd = sys3(SYS_open, pages_path, O_RDONLY | O_CLOEXEC, 0);
            if (fd < 0) fail(EXIT_PAGES, "open-pages", pages_path, 0, fd);
        }
        u64 done = 0;
        while (done < pg->len) {
            s64 n = SYS(SYS_pread64, fd, pg->addr + done, pg->len - done, pg->offset + done, 0, 0);
            if (n <= 0) fail(EXIT_PAGES, "read-pages", pages_path, pg->addr + done, n < 0 ? n : 5);
            done += (u64)n;
        }
    }
    if (fd >= 0) sys1(SYS_close, fd);
}

static void protect_vmas(void)
{
    FOR_RECORDS(r, p)
    {
        if (r->type != R_VMA) continue;
        const struct vma_rec *v = p;
        if (v->kind == VMA_FILE_SHARED) continue; /* mapped with its final protection */
        s64 res = sys3(SYS_mprotect, v->start, v->end - v->start, v->prot);
        if (res < 0) fail(EXIT_MMAP, "mprotect", 0, v->start, res);
    }
}

static void install_fd(s64 got, const struct fd_rec *f)
{
    if (got != f->fd) {
        s64 r = sys2(SYS_dup2, got, f->fd);
        sys1(SYS_close, got);
        if (r < 0) fail(EXIT_FDS, "dup2", f->path, (u64)f->fd, r);
    }
    s64 r = sys3(SYS_fcntl, f->fd, F_SETFD, f->fdflags);
    if (r < 0) fail(EXIT_FDS, "fcntl-setfd", 0, (u64)f->fd, r);
}

/* ---- the emulator's gdb stub (R_STUB): qemu made its listening socket before we ran, at the lowest free fd,
 * which a dumped fd may need. ---- */

/* accept and accept4 as the host numbers them in /proc/<tid>/syscall: the emulator's threads are the host's
 * (aarch64 on a phone; x86_64 under qemu on an x86_64 host). */
static const s64 accept_calls[] = {202, 242, 43, 288};

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static s64 parse_dec(const char **s)
{
    s64 v = 0;
    while (**s >= '0' && **s <= '9') v = v * 10 + (**s - '0'), (*s)++;
    return v;
}

static int is_stub_socket(s64 fd, const char *stub)
{
    struct {
        u16 family;
        char path[108];
    } sun;
    u32 len = sizeof(sun);
    memset(&sun, 0, sizeof(sun));
    if (sys3(SYS_getsockname, fd, &sun, &len) < 0 || sun.family != AF_UNIX) return 0;
    sun.path[sizeof(sun.path) - 1] = 0;
    return streq(sun.path, stub);
}

/* Whether one of our threads (the emulator's accept thread: it shares our fd table) waits in accept() on fd. */
static int accepting_on(s64 fd)
{
    static u8 dents[8192];
    char path[80], buf[160];
    s64 dir = sys3(SYS_open, "/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dir < 0) return 0;
    int found = 0;
    for (s64 n; !found && (n = sys3(SYS_getdents64, dir, dents, sizeof(dents))) > 0;) {
        for (s64 off = 0; off < n && !found;) {
            u16 reclen = *(const u16 *)(dents + off + 16);
            const char *name = (const char *)(dents + off + 19);
            off += reclen;
            if (name[0] < '0' || name[0] > '9' || slen(name) > 20) continue;
            char *end = fmt_s(fmt_s(fmt_s(path, "/proc/self/task/"), name), "/syscall");
            *end = 0;
            s64 f = sys3(SYS_open, path, O_RDONLY | O_CLOEXEC, 0);
            if (f < 0) continue;
            s64 got = sys3(SYS_read, f, buf, sizeof(buf) - 1);
            sys1(SYS_close, f);
            if (got <= 0) continue;
            buf[got] = 0;
            const char *s = buf;
            s64 nr = parse_dec(&s);
            if (s[0] != ' ' || s[1] != '0' || s[2] != 'x') continue;
            s += 3;
            u64 arg = parse_hex(&s);
            for (u64 i = 0; i < sizeof(accept_calls) / sizeof(accept_calls[0]); i++)
                if (nr == accept_calls[i] && arg == (u64)fd) found = 1;
        }
    }
    sys1(SYS_close, dir);
    return found;
}

/* Give the stub's fd number to the dumped fd that needs it: the socket moves above every dumped fd. Only once
 * qemu's accept thread waits in accept() on it (it keeps the file, not the number; and it never closes the
 * number after a connection), else it could accept on the dumped fd that took the number. */
static void move_stub(const char *stub)
{
    s64 top = 2;
    FOR_RECORDS(r, p)
    {
        if (r->type == R_FD && ((const struct fd_rec *)p)->fd > top) top = ((const struct fd_rec *)p)->fd;
    }
    FOR_RECORDS(r, p)
    {
        if (r->type != R_FD) continue;
        s64 fd = ((const struct fd_rec *)p)->fd;
        if (fd <= 2 || sys2(SYS_fcntl, fd, F_GETFD) == -EBADF || !is_stub_socket(fd, stub)) continue;
        for (int waited = 0; !accepting_on(fd); waited++) {
            if (waited == 5000) fail(EXIT_FDS, "stub-not-waiting", stub, (u64)fd, 16);
            struct {
                s64 sec, nsec;
            } ms = {0, 1000000};
            sys2(SYS_nanosleep, &ms, 0);
        }
        s64 moved = sys3(SYS_fcntl, fd, F_DUPFD_CLOEXEC, top + 1);
        if (moved < 0) fail(EXIT_FDS, "stub-move", stub, (u64)fd, moved);
        sys1(SYS_close, fd);
        return;
    }
}

static void restore_fds(void)
{
    const char *stub = find_string(R_STUB);
    if (stub) move_stub(stub);
    FOR_RECORDS(r, p)
    {
        if (r->type != R_FD) continue;
        const struct fd_rec *f = p;
        /* Above stdio, an fd open now belongs to the emulator (it shares our fd table): never clobber it. */
        if (f->fd > 2 && sys2(SYS_fcntl, f->fd, F_GETFD) != -EBADF)
            fail(EXIT_FDS, "fd-in-use", "by the emulator", (u64)f->fd, 16);
        if (f->kind == FD_FILE) {
            u32 flags = f->flags & ~(u32)(O_CREAT | O_EXCL | O_TRUNC);
            s64 got = sys3(SYS_open, f->path, flags | O_NOCTTY, 0);
            if (got < 0) fail(EXIT_FDS, "open", f->path, (u64)f->fd, got);
            install_fd(got, f);
            /* Character devices and directories may not seek: the error does not matter for them. */
            if (f->pos) sys3(SYS_lseek, f->fd, f->pos, 0);
            continue;
        }
        s64 s = sys3(SYS_socket, f->family, f->type, f->proto);
        if (s < 0) fail(EXIT_FDS, "socket", 0, (u64)f->fd, s);
        install_fd(s, f);
        if (f->kind == FD_LISTEN || f->kind == FD_BOUND) {
            int one = 1;
            sys5(SYS_setsockopt, f->fd, SOL_SOCKET, SO_REUSEADDR, &one, 4);
            u8 sa[28];
            memset(sa, 0, sizeof(sa));
            u64 salen;
            sa[0] = (u8)f->family;
            sa[2] = (u8)(f->port >> 8), sa[3] = (u8)f->port;
            if (f->family == AF_INET6) {
                int v6only = (int)f->v6only;
                sys5(SYS_setsockopt, f->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, 4);
                memcpy(sa + 8, f->addr, 16);
                salen = 28;
            } else {
                memcpy(sa + 4, f->addr, 4);
                salen = 16;
            }
            s64 b = sys3(SYS_bind, f->fd, sa, salen);
            if (b < 0) fail(EXIT_FDS, "bind", 0, f->port, b);
            if (f->kind == FD_LISTEN) {
                s64 l = sys2(SYS_listen, f->fd, f->backlog);
                if (l < 0) fail(EXIT_FDS, "listen", 0, f->port, l);
            }
        }
        s64 fl = sys3(SYS_fcntl, f->fd, F_SETFL, f->flags & O_NONBLOCK);
        if (fl < 0) fail(EXIT_FDS, "fcntl-setfl", 0, (u64)f->fd, fl);
    }
}

struct k_sigaction {
    u64 handler, flags, restorer, mask;
};

static void restore_sigactions(void)
{
    FOR_RECORDS(r, p)
    {
        if (r->type != R_SIGACTION) continue;
        const struct sigaction_rec *s = p;
        struct k_sigaction ka = {s->handler, s->flags, s->restorer, s->mask};
        s64 res = sys4(SYS_rt_sigaction, s->signo, &ka, 0, 8);
        if (res < 0) fail(EXIT_SIGNALS, "rt_sigaction", 0, s->signo, res);
    }
}

/* The kernel's rt_sigframe, as qemu's emulated rt_sigreturn also reads it; only x87/SSE state (FXSAVE). */
static void build_frame(u8 *slot, const struct thread_rec *t)
{
    u64 *robust = (u64 *)slot;
    robust[0] = t->futex_rla;
    robust[1] = t->futex_rla_len;
    struct rt_sigframe64 *f = (struct rt_sigframe64 *)(slot + SLOT_FRAME);
    memset(f, 0, sizeof(*f));
    u8 *fx = slot + SLOT_FXSAVE; /* 64-byte aligned: slots are pages */
    memcpy(fx, t->fxsave, 512);
    f->uc.ss_flags = 2; /* SS_DISABLE */
    f->uc.mc.regs = t->regs;
    f->uc.mc.cs = 0x33;
    f->uc.mc.ss = 0x2b;
    f->uc.mc.fpstate = (u64)fx;
    f->uc.sigmask = t->sigmask;
}

static const struct thread_rec *main_thread(void)
{
    FOR_RECORDS(r, p)
    {
        if (r->type == R_THREAD && ((const struct thread_rec *)p)->main) return p;
    }
    return 0;
}

extern const u8 __executable_start[], _end[];

__attribute__((noreturn, used)) void restore_main(u64 *sp)
{
    /* No signal may reach a half-restored process: everything stays blocked until each thread's
     * rt_sigreturn installs its own dumped mask. */
    u64 all = ~0UL;
    sys4(SYS_rt_sigprocmask, SIG_SETMASK, &all, 0, 8);

    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    if (argc != 2) {
        put(2, "usage: restorer PLAN\n");
        sys1(SYS_exit_group, EXIT_USAGE);
    }
    load_plan(argv[1]);
    status_path = find_string(R_STATUS);

    /* guest_base must be 0: our own code must then be where the host's maps say something is mapped. */
    read_maps();
    if (!mapped_now((u64)__executable_start))
        fail(EXIT_OVERLAP, "guest-base", "is not 0 (run the emulator with -B 0)", 0, 22);

    /* Move the plan and reserve the trampoline in a range no dumped VMA uses. */
    u64 nthreads = 0;
    FOR_RECORDS(r, p)
    {
        if (r->type == R_THREAD) nthreads++;
    }
    const struct thread_rec *mt = main_thread();
    if (!mt) fail(EXIT_USAGE, "plan", "has no main thread", 0, 22);
    u64 tramp_len = PAGE_UP(PAGE + nthreads * SLOT_SIZE);
    u64 scratch_len = tramp_len + PAGE_UP(plan_size);
    u64 scratch = find_scratch(scratch_len);
    s64 res = map_exact(scratch, scratch_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (res < 0) fail(EXIT_MMAP, "mmap-scratch", 0, scratch, res);
    memcpy((void *)(scratch + tramp_len), plan, plan_size);
    sys2(SYS_munmap, plan, PAGE_UP(plan_size));
    plan = (const u8 *)(scratch + tramp_len);
    status_path = find_string(R_STATUS);
    mt = main_thread();

    read_maps();
    check_layout();
    map_vmas();
    const char *pages = find_string(R_PAGES_FILE);
    if (pages) fill_pages(pages);
    protect_vmas();
    restore_fds();
    const char *cwd = find_string(R_CWD);
    if (cwd) {
        s64 c = sys1(SYS_chdir, cwd);
        if (c < 0) fail(EXIT_FDS, "chdir", cwd, 0, c);
    }
    restore_sigactions();

    /* The trampoline page: code, the clone arguments, then one slot (robust list + frame) per thread. */
    u8 *tramp = (u8 *)scratch;
    u64 code_len = (u64)(tramp_end - tramp_start);
    memcpy(tramp, tramp_start, code_len);
    struct tramp_args *args = (struct tramp_args *)(tramp + 1024);
    memset(args, 0, sizeof(*args));
    u64 slot = 1;
    FOR_RECORDS(r, p)
    {
        if (r->type != R_THREAD) continue;
        const struct thread_rec *t = p;
        u8 *s = t->main ? tramp + PAGE : tramp + PAGE + slot++ * SLOT_SIZE;
        build_frame(s, t);
        u64 rsp = (u64)(s + SLOT_FRAME + 8);
        if (t->main) {
            args->main_rsp = rsp;
            continue;
        }
        struct clone_args_rec *c = &args->clones[args->nclones++];
        /* The libc's copy of the TID gets the new one (pthread_join, pthread_kill); the kernel clears
         * clear_child_tid on exit, as before (glibc: the same word; musl: its thread-list lock). */
        c->flags = CLONE_THREAD_FLAGS | CLONE_SETTLS;
        if (t->tid_addr) c->flags |= CLONE_PARENT_SETTID;
        if (t->clear_tid) c->flags |= CLONE_CHILD_CLEARTID;
        c->newsp = rsp;
        c->ptid = t->tid_addr;
        c->ctid = t->clear_tid;
        c->tls = t->fs_base;
    }
    if (1024 + sizeof(*args) + args->nclones * sizeof(struct clone_args_rec) > PAGE || code_len > 1024)
        fail(EXIT_THREADS, "threads", "too many for the trampoline page", args->nclones, 7);
    args->unmap_addr = PAGE_DOWN((u64)__executable_start);
    args->unmap_len = PAGE_UP((u64)_end) - args->unmap_addr;

    /* The main thread's own state: TLS, TID, robust list. */
    res = sys2(SYS_arch_prctl, ARCH_SET_FS, mt->fs_base);
    if (res < 0) fail(EXIT_THREADS, "arch_prctl-fs", 0, mt->fs_base, res);
    if (mt->gs_base) sys2(SYS_arch_prctl, ARCH_SET_GS, mt->gs_base);
    if (mt->clear_tid || mt->tid_addr) {
        /* set_tid_address returns the caller's TID; with 0 nothing is cleared at exit, as before the dump. */
        s64 tid = sys1(SYS_set_tid_address, mt->clear_tid);
        if (mt->tid_addr) *(s32 *)mt->tid_addr = (s32)tid;
    }
    sys2(SYS_set_robust_list, mt->futex_rla, mt->futex_rla_len); /* ENOSYS under qemu: nothing to do */

    res = sys3(SYS_mprotect, tramp, tramp_len, PROT_READ | PROT_EXEC);
    if (res < 0) fail(EXIT_THREADS, "mprotect-trampoline", 0, scratch, res);

    report_status("ok\n");
    /* The plan copy is no longer needed; the trampoline stays mapped (its frames are read by rt_sigreturn). */
    sys2(SYS_munmap, plan, PAGE_UP(plan_size));
    ((void (*)(struct tramp_args *))(void *)tramp)(args);
    for (;;) {
    }
}

/* Entry: the initial stack holds argc, argv, envp; pass it on with a 16-byte aligned stack. */
__asm__(".text\n"
        ".globl _start\n"
        "_start:\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call restore_main\n"
        "    ud2\n");
