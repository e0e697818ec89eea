// Inner loops that bound what integer arithmetic can buy an AVX2-only CPU (no VNNI, no AVX-512), one thread.
// Built and run by bench_avx2_integer.py; prints one JSON object per round on stdout.
//
// 1. The recurrent matvec of the int8 LSTM format, one thread's share of one step at C = 1024 on 2 threads
//    (2048 rows x 1024 inputs per layer, two layers' matrices alternating, as the decode reads them):
//      float32:        FMA per 8 weights (the float32 format's bytes: 4x int8's);
//      int16_madd:     vpmovsxbw + vpmaddwd + vpaddd per 16 weights, h as int16;
//      u7_maddubs:     vpmaddubsw + vpmaddwd(ones) + vpaddd per 32 weights, h as one unsigned 7-bit byte
//                      (u8 x s8 pair sums stay below 2^15 only when h <= 127): the kernel's path;
//      u7x2_maddubs:   the same with h as two 7-bit digits (14 bits), two accumulators.
// 2. A register-blocked GEMM micro-kernel (6 rows x 16 columns, K = 256, operands in L1): float32 FMA
//    (8 multiply-adds per instruction) against int16 vpmaddwd + vpaddd (16 per pair of instructions).
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TARGET __attribute__((target("avx2,fma"), noinline))
enum { K = 1024, ROWS = 2048, TILE = 64, LAYERS = 2, STEPS = 500, GEMM_K = 256, GEMM_REPS = 200000 };

typedef int32_t i32x8 __attribute__((vector_size(32)));  // GCC vectors: accumulators stay in registers

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// tiles of 64 rows, [k][64] float32
TARGET void matvec_float32(const float* w, const float* h, float* out) {
  for (int t = 0; t < ROWS / TILE; ++t) {
    const float* p = w + (size_t)t * TILE * K;
    __m256 acc[8];
    for (int v = 0; v < 8; ++v) acc[v] = _mm256_setzero_ps();
    for (int k = 0; k < K; ++k, p += TILE) {
      const __m256 x = _mm256_set1_ps(h[k]);
      for (int v = 0; v < 8; ++v) acc[v] = _mm256_fmadd_ps(_mm256_loadu_ps(p + 8 * v), x, acc[v]);
    }
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(out + t * TILE + 8 * v, acc[v]);
  }
}

// tiles of 64 rows, [k / 2][64][2] int8; h as int16 pairs
TARGET void matvec_int16_madd(const int8_t* w, const int16_t* h, float* out) {
  for (int t = 0; t < ROWS / TILE; ++t) {
    const int8_t* p = w + (size_t)t * TILE * K;
    i32x8 acc[8] = {0};
    for (int k = 0; k < K / 2; ++k, p += 2 * TILE) {
      int32_t pair;
      memcpy(&pair, h + 2 * k, 4);
      const __m256i x = _mm256_set1_epi32(pair);
      for (int v = 0; v < 8; ++v) {
        const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 16 * v)));
        acc[v] += (i32x8)_mm256_madd_epi16(wv, x);
      }
    }
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(out + t * TILE + 8 * v, _mm256_cvtepi32_ps((__m256i)acc[v]));
  }
}

// tiles of 64 rows, [k / 4][64][4] int8 (the VNNI layout); h as unsigned bytes (one or two digits)
TARGET void matvec_u7_maddubs(const int8_t* w, const uint8_t* h, float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < ROWS / TILE; ++t) {
    const int8_t* p = w + (size_t)t * TILE * K;
    i32x8 acc[8] = {0};
    for (int k = 0; k < K / 4; ++k, p += 4 * TILE) {
      int32_t quad;
      memcpy(&quad, h + 4 * k, 4);
      const __m256i x = _mm256_set1_epi32(quad);
      for (int v = 0; v < 8; ++v) {
        const __m256i s = _mm256_maddubs_epi16(x, _mm256_loadu_si256((const __m256i*)(p + 32 * v)));
        acc[v] += (i32x8)_mm256_madd_epi16(s, ones);
      }
    }
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(out + t * TILE + 8 * v, _mm256_cvtepi32_ps((__m256i)acc[v]));
  }
}

TARGET void matvec_u7x2_maddubs(const int8_t* w, const uint8_t* h, float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int t = 0; t < ROWS / TILE; ++t) {
    const int8_t* p = w + (size_t)t * TILE * K;
    i32x8 hi[8] = {0}, lo[8] = {0};
    for (int k = 0; k < K / 4; ++k, p += 4 * TILE) {
      int32_t qh, ql;
      memcpy(&qh, h + 4 * k, 4);
      memcpy(&ql, h + K + 4 * k, 4);
      const __m256i xh = _mm256_set1_epi32(qh), xl = _mm256_set1_epi32(ql);
      for (int v = 0; v < 8; ++v) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(p + 32 * v));
        hi[v] += (i32x8)_mm256_madd_epi16(_mm256_maddubs_epi16(xh, wv), ones);
        lo[v] += (i32x8)_mm256_madd_epi16(_mm256_maddubs_epi16(xl, wv), ones);
      }
    }
    for (int v = 0; v < 8; ++v)
      _mm256_storeu_ps(out + t * TILE + 8 * v,
                       _mm256_fmadd_ps(_mm256_cvtepi32_ps((__m256i)lo[v]), _mm256_set1_ps(1.0f / 126),
                                       _mm256_cvtepi32_ps((__m256i)hi[v])));
  }
}

TARGET void gemm_float32(const float* a, const float* b, float* c) {
  for (int r = 0; r < GEMM_REPS; ++r) {
    __m256 acc[6][2];
    for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < GEMM_K; ++k) {
      const __m256 b0 = _mm256_loadu_ps(b + 16 * k), b1 = _mm256_loadu_ps(b + 16 * k + 8);
      for (int i = 0; i < 6; ++i) {
        const __m256 x = _mm256_broadcast_ss(a + 6 * k + i);
        acc[i][0] = _mm256_fmadd_ps(x, b0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(x, b1, acc[i][1]);
      }
    }
    for (int i = 0; i < 6; ++i) {
      _mm256_storeu_ps(c + 16 * i, acc[i][0]);
      _mm256_storeu_ps(c + 16 * i + 8, acc[i][1]);
    }
  }
}

// a: per row, pairs of int16 inputs (k, k + 1) in one 32-bit value; b: [k / 2][16 columns][2] int16
TARGET void gemm_int16(const int32_t* a, const int16_t* b, int32_t* c) {
  for (int r = 0; r < GEMM_REPS; ++r) {
    i32x8 acc[6][2];
    for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = (i32x8){0};
    for (int k = 0; k < GEMM_K / 2; ++k) {
      const __m256i b0 = _mm256_loadu_si256((const __m256i*)(b + 32 * k));
      const __m256i b1 = _mm256_loadu_si256((const __m256i*)(b + 32 * k + 16));
      for (int i = 0; i < 6; ++i) {
        const __m256i x = _mm256_set1_epi32(a[6 * k + i]);
        acc[i][0] += (i32x8)_mm256_madd_epi16(x, b0);
        acc[i][1] += (i32x8)_mm256_madd_epi16(x, b1);
      }
    }
    for (int i = 0; i < 6; ++i) {
      _mm256_storeu_si256((__m256i*)(c + 16 * i), (__m256i)acc[i][0]);
      _mm256_storeu_si256((__m256i*)(c + 16 * i + 8), (__m256i)acc[i][1]);
    }
  }
}

int main(int argc, char** argv) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    fprintf(stderr, "avx2_integer_kernels: this CPU has no AVX2 + FMA\n");
    return 2;
  }
  const int rounds = argc > 1 ? atoi(argv[1]) : 5;
  const size_t n = (size_t)LAYERS * ROWS * K;
  int8_t* w8 = aligned_alloc(64, n);
  float* w32 = aligned_alloc(64, n * sizeof(float));
  srand(1);
  for (size_t i = 0; i < n; ++i) w32[i] = (float)(w8[i] = (int8_t)(rand() % 255 - 127));
  static int16_t h16[K];
  static uint8_t h7[2 * K];
  static float h32[K], out[ROWS];
  for (int k = 0; k < K; ++k) {
    h16[k] = (int16_t)(rand() % 65535 - 32767);
    h7[k] = (uint8_t)(rand() % 127 + 1);
    h7[K + k] = (uint8_t)(rand() % 127 + 1);
    h32[k] = (float)h16[k];
  }
  static float ga[6 * GEMM_K], gb[16 * GEMM_K], gc[96];
  static int32_t gai[3 * GEMM_K], gci[96];
  static int16_t gbi[16 * GEMM_K];
  for (int i = 0; i < 6 * GEMM_K; ++i) ga[i] = (float)(i % 7);
  for (int i = 0; i < 3 * GEMM_K; ++i) gai[i] = i % 7;
  for (int i = 0; i < 16 * GEMM_K; ++i) gb[i] = (float)(gbi[i] = (int16_t)(i % 5));
  const double macs = 6.0 * 16 * GEMM_K * GEMM_REPS;
  for (int r = 0; r < rounds; ++r) {  // interleaved: each round times every variant once
    double t[6];
    t[0] = now();
    for (int s = 0; s < STEPS; ++s) matvec_float32(w32 + (size_t)(s % LAYERS) * ROWS * K, h32, out);
    t[1] = now();
    for (int s = 0; s < STEPS; ++s) matvec_int16_madd(w8 + (size_t)(s % LAYERS) * ROWS * K, h16, out);
    t[2] = now();
    for (int s = 0; s < STEPS; ++s) matvec_u7_maddubs(w8 + (size_t)(s % LAYERS) * ROWS * K, h7, out);
    t[3] = now();
    for (int s = 0; s < STEPS; ++s) matvec_u7x2_maddubs(w8 + (size_t)(s % LAYERS) * ROWS * K, h7, out);
    t[4] = now();
    gemm_float32(ga, gb, gc);
    t[5] = now();
    gemm_int16(gai, gbi, gci);
    const double t6 = now();
    printf(
        "{\"matvec_us_per_step\": {\"float32\": %.3f, \"int16_madd\": %.3f, \"u7_maddubs\": %.3f, "
        "\"u7x2_maddubs\": %.3f}, \"gemm_gmac_per_s\": {\"float32_fma\": %.3f, \"int16_madd\": %.3f}}\n",
        (t[1] - t[0]) / STEPS * 1e6, (t[2] - t[1]) / STEPS * 1e6, (t[3] - t[2]) / STEPS * 1e6,
        (t[4] - t[3]) / STEPS * 1e6, macs / (t[5] - t[4]) / 1e9, macs / (t6 - t[5]) / 1e9);
    fflush(stdout);
  }
  free(w8);
  free(w32);
  return 0;
}
