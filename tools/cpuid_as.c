// LD_PRELOAD library that makes every CPUID in the process report an older CPU class, so that torch, oneDNN,
// MKL, ONNX Runtime, OpenVINO and jasco_fast all pick the code paths they would take on that CPU.
//
// How: arch_prctl(ARCH_SET_CPUID, 0) makes CPUID fault (Linux, on CPUs or hypervisors with CPUID faulting:
// the `cpuid_fault` flag of /proc/cpuinfo). The SIGSEGV handler runs the real CPUID with faulting briefly off,
// clears the feature bits the class lacks, and steps over the instruction. The setting is inherited by threads
// and forks; exec resets it (the library, still preloaded, sets it again). sigaction/signal calls for SIGSEGV
// from the program are recorded and chained to, so that handlers such as Python's faulthandler keep working.
//
// CPUID_AS=avx2 (default): AVX2 + FMA + F16C only, like AMD Zen 2/3 or Intel Skylake client: no AVX-512,
//   AVX-VNNI, AMX, GFNI. CPUID_AS=avx512: AVX-512 F/CD/BW/DQ/VL without BF16, FP16, VNNI or AMX (Skylake-SP).
// XGETBV is not trapped: XCR0 still lists the AVX-512 state, which every library checks only after the CPUID bit.
// glibc picks its string functions before any constructor runs: GLIBC_TUNABLES covers those (tools/cpuid-as).
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

enum { AS_AVX2, AS_AVX512 };
static int cpu_as = AS_AVX2;
static struct sigaction program_action;  // what the program asked SIGSEGV to do
static int (*real_sigaction)(int, const struct sigaction*, struct sigaction*);

static void mask(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {  // r: eax, ebx, ecx, edx
  if (leaf == 7 && subleaf == 0) {
    uint32_t ebx = (1u << 26) | (1u << 27);  // avx512pf, avx512er
    uint32_t ecx =
        (1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14);  // vbmi, vbmi2, vnni, bitalg, vpopcntdq
    uint32_t edx = (1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25);
    if (cpu_as == AS_AVX2) {
      ebx |= (1u << 16) | (1u << 17) | (1u << 21) | (1u << 28) | (1u << 30) | (1u << 31);  // f, dq, ifma, cd, bw, vl
      ecx |= 1u << 8;                                                                      // gfni
    }
    r[1] &= ~ebx;
    r[2] &= ~ecx;
    r[3] &= ~edx;
  } else if (leaf == 7 && subleaf == 1) {
    // avx_vnni, avx512_bf16, amx_fp16, avx_ifma; avx_vnni_int8, avx_ne_convert, avx10
    r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    r[3] &= ~((1u << 4) | (1u << 5) | (1u << 19));
  } else if (leaf == 0xd && subleaf == 0 && cpu_as == AS_AVX2) {
    r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));  // AVX-512 and AMX state
  } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {
    r[0] = r[1] = r[2] = r[3] = 0;  // AMX tile and AVX10 leaves
  }
}

static void set_faulting(int on) { syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void on_segv(int sig, siginfo_t* info, void* context) {
  ucontext_t* uc = (ucontext_t*)context;
  greg_t* g = uc->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)g[REG_RIP];
  if (ip[0] == 0x0f && ip[1] == 0xa2) {
    uint32_t leaf = (uint32_t)g[REG_RAX], subleaf = (uint32_t)g[REG_RCX], r[4];
    set_faulting(0);
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
    set_faulting(1);
    mask(leaf, subleaf, r);
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
    return;
  }
  // A real fault: the program's handler, or the default action once this handler returns.
  if (program_action.sa_flags & SA_SIGINFO) {
    if (program_action.sa_sigaction) return program_action.sa_sigaction(sig, info, context);
  } else if (program_action.sa_handler != SIG_DFL && program_action.sa_handler != SIG_IGN) {
    return program_action.sa_handler(sig);
  }
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &dfl, NULL);
}

int sigaction(int sig, const struct sigaction* act, struct sigaction* old) {
  if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, act, old);
  if (old) *old = program_action;
  if (act) program_action = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

__attribute__((constructor)) static void start(void) {
  const char* as = getenv("CPUID_AS");
  if (as && strcmp(as, "avx512") == 0)
    cpu_as = AS_AVX512;
  else if (as && *as && strcmp(as, "avx2") != 0) {
    fprintf(stderr, "cpuid_as: CPUID_AS must be avx2 or avx512, not %s\n", as);
    _exit(2);
  }
  real_sigaction = dlsym(RTLD_NEXT, "sigaction");
  struct sigaction act;
  memset(&act, 0, sizeof act);
  act.sa_sigaction = on_segv;
  act.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&act.sa_mask);
  real_sigaction(SIGSEGV, &act, NULL);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    fprintf(stderr, "cpuid_as: this CPU or kernel cannot make CPUID fault (no cpuid_fault in /proc/cpuinfo)\n");
    _exit(2);
  }
}
