// The vector instruction sets the CPU kernels have copies for (compiled with function-level target attributes,
// chosen at run time), and that choice: the best this CPU runs, or a lower one named by an environment
// variable, so that tests reach every copy of a kernel on one machine.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <string>

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#endif

namespace jasco_fast {

// avx2: AVX2 + FMA; avx512: AVX-512 F, BW, VL and DQ (with AVX2 + FMA); avx512_vnni: that plus AVX512-VNNI
// (integer dot products). Ordered: a higher one includes the lower.
enum class CpuIsa { portable, avx2, avx512, avx512_vnni };

inline CpuIsa best_cpu_isa() {
  CpuIsa best = CpuIsa::portable;
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = CpuIsa::avx2;
  if (best == CpuIsa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = CpuIsa::avx512;
  if (best == CpuIsa::avx512 && __builtin_cpu_supports("avx512vnni")) best = CpuIsa::avx512_vnni;
#endif
  return best;
}

// Whether the CPU has AMX tiles, by the rule of torch's cpuinfo (torch.cpu._is_amx_tile_supported(), which
// jasco_fast.decoder.cpu_has_amx asks): CPUID leaf 7 subleaf 0 EDX bit 24 (AMX-TILE), with the OS saving the
// AVX-512 state (OSXSAVE, and XCR0 bits 1, 2, 5, 6 and 7). cpuinfo does not look at the tile state (XCR0 bits
// 17, 18): this answers "an AMX CPU", whether or not this kernel lets a process use the tiles.
inline bool cpu_has_amx_tile() {
#if defined(__GNUC__) && defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid(1, eax, ebx, ecx, edx);
  constexpr unsigned kXsaveEnabled = (1u << 26) | (1u << 27);  // XSAVE on the chip, enabled by the OS
  if ((ecx & kXsaveEnabled) != kXsaveEnabled) return false;
  unsigned xcr0_low = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));  // xgetbv(0) without -mxsave
  constexpr unsigned kAvx512State = 0xE6;  // ymm halves (1, 2), opmask (5), zmm upper halves (6), zmm16-31 (7)
  if ((xcr0_low & kAvx512State) != kAvx512State) return false;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  return (edx >> 24) & 1u;
#else
  return false;
#endif
}

// The level named by the environment variable `env` ("avx512", "avx2" or "portable"; unset or anything else:
// no cap; "avx512" leaves out VNNI).
inline CpuIsa isa_cap(const char* env) {
  const char* value = std::getenv(env);
  const std::string cap = value ? value : "";
  if (cap == "portable") return CpuIsa::portable;
  if (cap == "avx2") return CpuIsa::avx2;
  if (cap == "avx512") return CpuIsa::avx512;
  return CpuIsa::avx512_vnni;
}

// Whether JASCO_FAST_ISA or `env` names a cap at all.
inline bool isa_capped(const char* env) {
  for (const char* name : {"JASCO_FAST_ISA", env}) {
    const char* value = std::getenv(name);
    if (value && *value) return true;
  }
  return false;
}

// best_cpu_isa(), lowered to JASCO_FAST_ISA (every kernel) and to `env` (one kernel family), whichever is lower:
// CI emulates an AVX2-only CPU, or plain loops, on whatever machine it has.
inline CpuIsa cpu_isa_capped_by(const char* env) {
  return std::min({best_cpu_isa(), isa_cap("JASCO_FAST_ISA"), isa_cap(env)});
}

}  // namespace jasco_fast
