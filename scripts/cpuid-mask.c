/* cpuid-mask: make one process (and the processes it starts) see a smaller x86 CPU, at native speed.
 *
 * Loaded with LD_PRELOAD by scripts/as-cpu.sh. Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, flag
 * "cpuid_fault" in /proc/cpuinfo) turns every CPUID instruction of this thread, and of the threads and
 * children it starts, into a SIGSEGV; the handler below runs the real CPUID, clears the features the chosen
 * class lacks, and steps over the instruction. Every library that dispatches on CPUID (NumPy, PyTorch's
 * ATen and oneDNN, ONNX Runtime's MLAS, cpuinfo) then picks the kernels that class would run, while every
 * other instruction runs on the host unchanged. It is the host's cores running another class's code paths,
 * not another CPU: timings are this microarchitecture's, and a CPU with only AVX2 is usually older and
 * slower per core.
 *
 * CPUID_MASK_CLASS: avx2 (no AVX-512, VNNI, BF16 or AMX), avx512 (AVX-512 F/CD/BW/DQ/VL, no VNNI),
 * avx512-vnni (no BF16, FP16 or AMX). execve() resets CPUID faulting, so the child loads this again
 * through LD_PRELOAD. The program's own SIGSEGV handlers (Python's faulthandler) are kept and called for
 * every fault that is not a CPUID.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012
#define BIT(n) (1u << (n))

enum { AVX2 = 1, AVX512, AVX512_VNNI };
static int cls;                      /* 0: not active */
static struct sigaction program_act; /* what the program asked SIGSEGV to do */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) /* r: eax, ebx, ecx, edx */
{
    if (leaf == 7 && sub == 0) {
        /* AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
        r[3] &= ~(BIT(22) | BIT(23) | BIT(24) | BIT(25));
        if (cls <= AVX512) {
            r[2] &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14)); /* VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
            r[1] &= ~BIT(21);                                        /* IFMA */
            r[3] &= ~(BIT(2) | BIT(3) | BIT(8));                     /* 4VNNIW, 4FMAPS, VP2INTERSECT */
        }
        if (cls == AVX2)
            r[1] &= ~(BIT(16) | BIT(17) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31)); /* F DQ PF ER CD BW VL */
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~(BIT(4) | BIT(5) | BIT(21) | BIT(23)); /* AVX-VNNI, AVX512-BF16, AMX-FP16, AVX-IFMA */
        r[3] &= ~(BIT(4) | BIT(5) | BIT(10) | BIT(19)); /* AVX-VNNI-INT8, AVX-NE-CONVERT, AVX-VNNI-INT16, AVX10 */
    } else if (leaf == 0xD && sub == 0) {
        r[0] &= ~(BIT(17) | BIT(18)); /* AMX tile state */
        if (cls == AVX2)
            r[0] &= ~(BIT(5) | BIT(6) | BIT(7)); /* opmask and ZMM state */
    } else if (leaf == 0xD && (sub == 17 || sub == 18 || (cls == AVX2 && sub >= 5 && sub <= 7))) {
        r[0] = r[1] = r[2] = r[3] = 0;
    } else if (leaf == 0x1D || leaf == 0x1E || leaf == 0x24) { /* AMX tile and TMUL info, AVX10 */
        r[0] = r[1] = r[2] = r[3] = 0;
    }
}

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    /* a CPUID fault is a general-protection fault (SI_KERNEL); only then is the instruction read */
    if (si->si_code == SI_KERNEL) {
        const unsigned char *ip = (const unsigned char *)g[REG_RIP];
        if (ip[0] == 0x0f && ip[1] == 0xa2) {
            uint32_t r[4], leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
            syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
            __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
            syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
            mask(leaf, sub, r);
            g[REG_RAX] = r[0];
            g[REG_RBX] = r[1];
            g[REG_RCX] = r[2];
            g[REG_RDX] = r[3];
            g[REG_RIP] += 2;
            return;
        }
    }
    /* not a CPUID: what the program asked for, else the default (the instruction faults again and the
     * process ends as it would have) */
    if ((program_act.sa_flags & SA_SIGINFO) && program_act.sa_sigaction) {
        program_act.sa_sigaction(sig, si, ctx);
        return;
    }
    if (!(program_act.sa_flags & SA_SIGINFO) && program_act.sa_handler != SIG_DFL &&
        program_act.sa_handler != SIG_IGN) {
        program_act.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
}

/* The program's SIGSEGV handler is recorded, not installed, while the mask is on. */
int sigaction(int signum, const struct sigaction *act, struct sigaction *oldact)
{
    if (!real_sigaction)
        real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (signum != SIGSEGV || !cls)
        return real_sigaction(signum, act, oldact);
    if (oldact)
        *oldact = program_act;
    if (act)
        program_act = *act;
    return 0;
}

sighandler_t signal(int signum, sighandler_t handler)
{
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(signum, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void start(void)
{
    const char *want = getenv("CPUID_MASK_CLASS");
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (!want || !*want)
        return;
    int c = !strcmp(want, "avx2") ? AVX2 : !strcmp(want, "avx512") ? AVX512 : !strcmp(want, "avx512-vnni") ? AVX512_VNNI : 0;
    if (!c) {
        fprintf(stderr, "cpuid-mask: CPUID_MASK_CLASS=%s is not one of avx2, avx512, avx512-vnni\n", want);
        _exit(2);
    }
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_sigaction = on_segv;
    act.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&act.sa_mask);
    memset(&program_act, 0, sizeof program_act);
    program_act.sa_handler = SIG_DFL;
    if (real_sigaction(SIGSEGV, &act, NULL) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid-mask: this kernel or CPU offers no CPUID faulting (no cpuid_fault flag in "
                        "/proc/cpuinfo), so the CPU cannot be masked here\n");
        _exit(2);
    }
    cls = c;
}
