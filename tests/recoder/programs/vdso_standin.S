/* A STAND-IN aarch64 vdso for tests (no arm64 kernel is at hand): a shared object exporting the symbols an
 * arm64 kernel's vdso exports, under version LINUX_2.6.39, each doing the plain system call. CRIU's vdso
 * proxy only needs a valid aarch64 ELF with these symbols (CRIU-IMAGES.md section 8). */
    .text
    .macro syscall_fn name, nr
    .globl \name
    .type \name, %function
\name:
    mov x8, #\nr
    svc #0
    ret
    .size \name, . - \name
    .endm

    syscall_fn __kernel_clock_gettime, 113
    syscall_fn __kernel_clock_getres, 114
    syscall_fn __kernel_gettimeofday, 169

    .globl __kernel_rt_sigreturn
    .type __kernel_rt_sigreturn, %function
__kernel_rt_sigreturn:
    mov x8, #139
    svc #0
    .size __kernel_rt_sigreturn, . - __kernel_rt_sigreturn
