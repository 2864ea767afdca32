/* cpuid-mask: make one process (and the processes it starts) see an older x86 CPU class, at native speed.
 *
 * Loaded with LD_PRELOAD by scripts/as-cpu.sh. Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, flag
 * "cpuid_fault" in /proc/cpuinfo) turns every CPUID instruction of this thread, and of the threads and
 * children it starts, into a SIGSEGV; the handler below runs the real CPUID, clears the features the chosen
 * class lacks, and steps over the instruction. Libraries loaded after this one that dispatch on CPUID (NumPy,
 * PyTorch's ATen and oneDNN, ONNX Runtime's MLAS, cpuinfo) then pick the kernels that class would run, while
 * every other instruction runs on the host unchanged. It is the host's cores running another class's code
 * paths, not another CPU: timings are this microarchitecture's.
 *
 * CPUID_MASK_CLASS: avx2 (Haswell / Zen 2: no AVX-512, VNNI, BF16 or AMX), avx512 (Skylake-SP: AVX-512
 * F/CD/BW/DQ/VL), avx512-vnni (Cascade Lake: that and AVX-512 VNNI). Features a class lacks are cleared,
 * none is added. CPUID_MASK_SELFTEST=1: say on stderr what leaf 7 reads after masking.
 *
 * Not masked (see scripts/as-cpu.sh): XGETBV, /proc/cpuinfo, statically linked programs, children started
 * with a cleaned environment, and the constructors of libraries a program links at startup (they run before
 * this one's). The program's own SIGSEGV handling is kept: handlers installed before or after this library
 * loads are called for every SIGSEGV that is not a CPUID (with their sa_mask and SA_RESETHAND), a SIGSEGV sent
 * by kill() acts as it would, and SIGSEGV is never blocked (a blocked CPUID fault would kill the thread).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <pthread.h>
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
static int (*real_sigprocmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_sigmask)(int, const sigset_t *, sigset_t *);

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) /* r: eax, ebx, ecx, edx */
{
    if (leaf == 7 && sub == 0) {
        r[1] &= ~BIT(21);                                               /* IFMA */
        r[2] &= ~(BIT(1) | BIT(6) | BIT(8) | BIT(9) | BIT(10) | BIT(12) | BIT(14)); /* VBMI VBMI2 GFNI VAES
                                                                           VPCLMULQDQ BITALG VPOPCNTDQ */
        r[3] &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25)); /* 4VNNIW 4FMAPS
                                                         VP2INTERSECT AMX-BF16 AVX512-FP16 AMX-TILE AMX-INT8 */
        if (cls <= AVX512)
            r[2] &= ~BIT(11); /* AVX512-VNNI */
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

static void to_default(void)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
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
    /* not a CPUID: what the program asked for */
    struct sigaction act = program_act;
    int info = (act.sa_flags & SA_SIGINFO) != 0;
    int custom = info ? act.sa_sigaction != NULL : (act.sa_handler != SIG_DFL && act.sa_handler != SIG_IGN);
    if (custom) {
        if (act.sa_flags & SA_RESETHAND) {
            memset(&program_act, 0, sizeof program_act);
            program_act.sa_handler = SIG_DFL;
        }
        sigset_t old;
        sigdelset(&act.sa_mask, SIGSEGV); /* a CPUID in the handler must still be answered */
        real_pthread_sigmask(SIG_BLOCK, &act.sa_mask, &old);
        if (info)
            act.sa_sigaction(sig, si, ctx);
        else
            act.sa_handler(sig);
        real_pthread_sigmask(SIG_SETMASK, &old, NULL);
        return;
    }
    int sent = si->si_code <= 0; /* kill(), raise(), tgkill(), sigqueue() */
    if (!info && act.sa_handler == SIG_IGN && sent)
        return; /* an ignored SIGSEGV that nothing faulted for */
    /* the default action: a fault happens again on return, a sent signal is sent again, and the process
     * ends as it would have */
    to_default();
    if (sent)
        raise(SIGSEGV);
}

static void resolve(void)
{
    if (!real_sigaction)
        real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (!real_sigprocmask)
        real_sigprocmask = dlsym(RTLD_NEXT, "sigprocmask");
    if (!real_pthread_sigmask)
        real_pthread_sigmask = dlsym(RTLD_NEXT, "pthread_sigmask");
}

/* The program's SIGSEGV handler is recorded, not installed, while the mask is on. */
int sigaction(int signum, const struct sigaction *act, struct sigaction *oldact)
{
    resolve();
    if (signum != SIGSEGV || !cls)
        return real_sigaction(signum, act, oldact);
    if (oldact)
        *oldact = program_act;
    if (act)
        program_act = *act;
    return 0;
}

static sighandler_t set_handler(int signum, sighandler_t handler, int flags)
{
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = flags;
    sigemptyset(&act.sa_mask);
    if (sigaction(signum, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

sighandler_t signal(int signum, sighandler_t handler) { return set_handler(signum, handler, SA_RESTART); }
sighandler_t bsd_signal(int signum, sighandler_t handler) { return set_handler(signum, handler, SA_RESTART); }
sighandler_t sysv_signal(int signum, sighandler_t handler)
{
    return set_handler(signum, handler, SA_RESETHAND | SA_NODEFER);
}
sighandler_t sigset(int signum, sighandler_t handler)
{
    static sighandler_t (*real_sigset)(int, sighandler_t);
    if (signum != SIGSEGV || !cls || handler == SIG_HOLD) {
        if (!real_sigset)
            real_sigset = dlsym(RTLD_NEXT, "sigset");
        return signum == SIGSEGV && cls ? program_act.sa_handler : real_sigset(signum, handler);
    }
    return set_handler(signum, handler, 0);
}

/* SIGSEGV is never blocked while the mask is on: the kernel kills a thread whose CPUID faults while it is. */
static int set_mask(int (*real)(int, const sigset_t *, sigset_t *), int how, const sigset_t *set, sigset_t *old)
{
    sigset_t copy;
    if (cls && set && how != SIG_UNBLOCK && sigismember(set, SIGSEGV) == 1) {
        copy = *set;
        sigdelset(&copy, SIGSEGV);
        set = &copy;
    }
    return real(how, set, old);
}

int sigprocmask(int how, const sigset_t *set, sigset_t *oldset)
{
    resolve();
    return set_mask(real_sigprocmask, how, set, oldset);
}

int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)
{
    resolve();
    return set_mask(real_pthread_sigmask, how, set, oldset);
}

__attribute__((constructor)) static void start(void)
{
    const char *want = getenv("CPUID_MASK_CLASS");
    resolve();
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
    /* a handler installed before this library loaded (a constructor that ran first) is kept */
    if (real_sigaction(SIGSEGV, &act, &program_act) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "cpuid-mask: this kernel or CPU offers no CPUID faulting (no cpuid_fault flag in "
                        "/proc/cpuinfo), so the CPU cannot be masked here\n");
        _exit(2);
    }
    cls = c;
    sigset_t segv; /* a SIGSEGV blocked before this library loaded is unblocked too */
    sigemptyset(&segv);
    sigaddset(&segv, SIGSEGV);
    real_pthread_sigmask(SIG_UNBLOCK, &segv, NULL);
    const char *selftest = getenv("CPUID_MASK_SELFTEST");
    if (selftest && !strcmp(selftest, "1")) {
        unsigned a, b, cc, d;
        __cpuid_count(7, 0, a, b, cc, d); /* faults, and comes back masked */
        fprintf(stderr, "cpuid-mask: %s: leaf 7 ebx=%08x ecx=%08x (AVX512F %s, AVX512-VNNI %s)\n", want, b, cc,
                (b & BIT(16)) ? "on" : "off", (cc & BIT(11)) ? "on" : "off");
    }
}
