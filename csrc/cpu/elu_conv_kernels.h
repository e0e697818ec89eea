// The inner loops of elu_conv.cpp for one instruction set. Included once per instruction set (no include guard
// on purpose) with:
//   JF_ISA     the namespace the functions go in,
//   JF_TARGET  the function attribute that enables the instruction set (empty for the portable copy),
//   JF_WIDTH   float32 lanes per vector: 16 (AVX-512), 8 (AVX2 + FMA) or 1 (portable: V is a plain float).
// Everything computes in float32; activations are read and written as float or c10::BFloat16.
namespace JF_ISA {

constexpr int W = JF_WIDTH;
#if JF_WIDTH == 16
using V = __m512;
constexpr int kMaxVecs = 4;  // 6 rows x 4 vectors = 24 of the 32 zmm registers as accumulators
JF_TARGET inline V vload(const float* p) { return _mm512_loadu_ps(p); }
JF_TARGET inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
JF_TARGET inline V vset1(float x) { return _mm512_set1_ps(x); }
JF_TARGET inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
JF_TARGET inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
JF_TARGET inline float vsum(V v) { return _mm512_reduce_add_ps(v); }
JF_TARGET inline V vload(const c10::BFloat16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
JF_TARGET inline void vstore(c10::BFloat16* p, V v) {  // round to nearest even, NaN -> 0x7FC0 (as c10::BFloat16)
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
JF_TARGET inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
JF_TARGET inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
JF_TARGET inline V vfnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
JF_TARGET inline V vround(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
JF_TARGET inline V vpow2(V k) {  // 2^k for integral k >= -126
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23));
}
JF_TARGET inline V vpositive_else(V x, V other) {  // x > 0 ? x : other
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), other, x);
}
#elif JF_WIDTH == 8
using V = __m256;
constexpr int kMaxVecs = 2;  // 6 rows x 2 vectors = 12 of the 16 ymm registers as accumulators
JF_TARGET inline V vload(const float* p) { return _mm256_loadu_ps(p); }
JF_TARGET inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
JF_TARGET inline V vset1(float x) { return _mm256_set1_ps(x); }
JF_TARGET inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
JF_TARGET inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
JF_TARGET inline float vsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
JF_TARGET inline V vload(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
JF_TARGET inline void vstore(c10::BFloat16* p, V v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // 8 x 32-bit (each < 2^16) -> 8 x 16-bit
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}
JF_TARGET inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }  // b when either is NaN
JF_TARGET inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
JF_TARGET inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
JF_TARGET inline V vfnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b
JF_TARGET inline V vround(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
JF_TARGET inline V vpow2(V k) {  // 2^k for integral k >= -126
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
}
JF_TARGET inline V vpositive_else(V x, V other) {  // x > 0 ? x : other
  return _mm256_blendv_ps(other, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
}
#else
using V = float;
constexpr int kMaxVecs = 4;
inline V vload(const float* p) { return *p; }
inline void vstore(float* p, V v) { *p = v; }
inline V vset1(float x) { return x; }
inline V vfma(V a, V b, V c) { return a * b + c; }
inline V vadd(V a, V b) { return a + b; }
inline float vsum(V v) { return v; }
inline V vload(const c10::BFloat16* p) { return static_cast<float>(*p); }
inline void vstore(c10::BFloat16* p, V v) { *p = c10::BFloat16(v); }
inline V velu(V x, float alpha) { return x > 0.0f ? x : (x == x ? alpha * std::expm1(x) : x); }
inline V velu_bf16(V x, float alpha) { return velu(x, alpha); }
#endif

#if JF_WIDTH > 1
// ELU: x for x > 0, alpha * expm1(x) otherwise (NaN stays NaN). expm1(x) = 2^k expm1(r) + 2^k - 1 with
// x = k ln 2 + r, |r| <= ln 2 / 2 (ln 2 split in two for the reduction), expm1(r) by its degree-8 Taylor
// polynomial (truncation below 1e-9 relative); x is clamped to [-87, 0] first, where expm1 is -1 in float32.
JF_TARGET inline V velu(V x, float alpha) {
  // min / max pass a NaN x through (their second operand), so it stays NaN through the polynomial
  const V n = vmax(vset1(-87.0f), vmin(vset1(0.0f), x));
  const V k = vround(vmul(n, vset1(1.44269504088896341f)));
  V r = vfnma(k, vset1(0.693359375f), n);
  r = vfnma(k, vset1(-2.12194440e-4f), r);
  V p = vset1(1.0f / 40320);
  p = vfma(p, r, vset1(1.0f / 5040));
  p = vfma(p, r, vset1(1.0f / 720));
  p = vfma(p, r, vset1(1.0f / 120));
  p = vfma(p, r, vset1(1.0f / 24));
  p = vfma(p, r, vset1(1.0f / 6));
  p = vfma(p, r, vset1(0.5f));
  p = vfma(vmul(p, r), r, r);  // expm1(r)
  const V s = vpow2(k);
  return vpositive_else(x, vmul(vfma(s, p, vsub(s, vset1(1.0f))), vset1(alpha)));
}

// ELU for values rounded to bfloat16 next: relative error below 1e-5 (a bfloat16 half-ulp is 2e-3) in 3/4 of
// velu's instructions. expm1(x) = 2^k (2^f - 1) + 2^k - 1 with x log2(e) = k + f, |f| <= 1/2; 2^f - 1 is f times
// the degree-4 Taylor polynomial of (2^f - 1) / f, so it stays accurate relative to x near 0.
JF_TARGET inline V velu_bf16(V x, float alpha) {
  const V n = vmax(vset1(-87.0f), vmin(vset1(0.0f), x));
  const V t = vmul(n, vset1(1.44269504088896341f));
  const V k = vround(t);
  const V f = vsub(t, k);
  V p = vset1(1.3333558146e-3f);  // ln(2)^5 / 5!
  p = vfma(p, f, vset1(9.6181291076e-3f));
  p = vfma(p, f, vset1(5.5504108664e-2f));
  p = vfma(p, f, vset1(2.4022650696e-1f));
  p = vfma(p, f, vset1(6.9314718056e-1f));  // ln(2)
  const V s = vpow2(k);
  return vpositive_else(x, vmul(vfma(s, vmul(p, f), vsub(s, vset1(1.0f))), vset1(alpha)));
}
#endif

constexpr int kRows = 6;  // rows of a register block; tiles are padded to a multiple of it

// acc[r][v] (r < kRows, v < NV vectors of W columns) += sum over taps j and channels c of
// a[(r + j * tap_step) * lda + c] * w[(j * K + c) * N + v * W]; `out` holds the block's kRows x NV*W values
// (row stride ldo) before and after.
template <int NV>
JF_TARGET void block_gemm(const float* a, int64_t lda, int64_t K, int64_t taps, int64_t tap_step, const float* w,
                          int64_t N, float* out, int64_t ldo) {
  V acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vload(out + r * ldo + v * W);
  for (int64_t j = 0; j < taps; ++j) {
    const float* aj = a + j * tap_step * lda;
    const float* wj = w + j * K * N;
    for (int64_t c = 0; c < K; ++c) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = vload(wj + c * N + v * W);
      for (int r = 0; r < kRows; ++r) {
        const V av = vset1(aj[r * lda + c]);
        for (int v = 0; v < NV; ++v) acc[r][v] = vfma(av, wv[v], acc[r][v]);
      }
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) vstore(out + r * ldo + v * W, acc[r][v]);
}

// out[i, n] += sum_j sum_c a[(i + j * tap_step) * K + c] * w[(j * K + c) * N + n] for i < rows (a multiple of
// kRows), n < N (a multiple of W): the tile's convolution as register-blocked GEMMs, one per tap. Meanwhile it
// prefetches [ahead, ahead + ahead_bytes) into L2 (the next tile's input; prefetch_share).
JF_TARGET inline void tile_conv(const float* a, int64_t rows, int64_t K, int64_t taps, int64_t tap_step,
                                const float* w, int64_t N, float* out, const char* ahead = nullptr,
                                int64_t ahead_bytes = 0) {
  for (int64_t i = 0; i < rows; i += kRows) {
    prefetch_share(ahead, ahead_bytes, i / kRows, rows / kRows);
    for (int64_t n = 0; n < N;) {
      const int64_t vecs = std::min<int64_t>(kMaxVecs, (N - n) / W);
      const float* ai = a + i * K;
      float* o = out + i * N + n;
      switch (vecs) {
        case 4: block_gemm<4>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        case 3: block_gemm<3>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        case 2: block_gemm<2>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
        default: block_gemm<1>(ai, K, K, taps, tap_step, w + n, N, o, N); break;
      }
      n += vecs * W;
    }
  }
}

// out[i, n] += sum_j sum_c a[(i + j) * K + c] * w[(j * K + c) * N + n], as tile_conv (tap step 1, no prefetch) but
// with the column blocks outermost: a block of W's columns (taps x K x kMaxVecs * W floats) stays in L1/L2 while
// every row of the tile reads it, the access pattern of the transposed convolutions' wide [K, N] weights.
JF_TARGET inline void tile_conv_columns(const float* a, int64_t rows, int64_t K, int64_t taps, const float* w,
                                        int64_t N, float* out) {
  for (int64_t n = 0; n < N;) {
    const int64_t vecs = std::min<int64_t>(kMaxVecs, (N - n) / W);
    for (int64_t i = 0; i < rows; i += kRows) {
      const float* ai = a + i * K;
      float* o = out + i * N + n;
      switch (vecs) {
        case 4: block_gemm<4>(ai, K, K, taps, 1, w + n, N, o, N); break;
        case 3: block_gemm<3>(ai, K, K, taps, 1, w + n, N, o, N); break;
        case 2: block_gemm<2>(ai, K, K, taps, 1, w + n, N, o, N); break;
        default: block_gemm<1>(ai, K, K, taps, 1, w + n, N, o, N); break;
      }
    }
    n += vecs * W;
  }
}

// dst[c] = elu(src[c]) for c < C (a multiple of W), src in the activation dtype: for bfloat16 activations the
// unfused layers round elu's output to bfloat16, so velu_bf16's accuracy is enough.
template <typename scalar_t>
JF_TARGET inline void elu_row(const scalar_t* src, float* dst, int64_t C, float alpha) {
  for (int64_t c = 0; c < C; c += W) {
    const V x = vload(src + c);
    vstore(dst + c, std::is_same_v<scalar_t, c10::BFloat16> ? velu_bf16(x, alpha) : velu(x, alpha));
  }
}


// row r of y (rows of C values, a multiple of W) = the x row xs[r] + b: the residual block's shortcut plus conv2's bias
template <typename scalar_t>
JF_TARGET void add_rows(const scalar_t* const* xs, int64_t rows, const float* b, float* y, int64_t C) {
  for (int64_t r = 0; r < rows; ++r, y += C)
    for (int64_t c = 0; c < C; c += W) vstore(y + c, vadd(vload(xs[r] + c), vload(b + c)));
}

// hidden <- elu(hidden) (rows x H values), then conv2's products added to y
template <typename scalar_t>
JF_TARGET void elu_then_conv2(float* hidden, int64_t rows, const ResblockArgs<scalar_t>& p, float* y) {
  elu_row(hidden, hidden, rows * p.H, p.alpha);
  tile_conv(hidden, rows, p.H, 1, 1, p.w2, p.C, y);
}

// elu of n rows of C values (a null row: zeros), one row after another into dst
template <typename scalar_t>
JF_TARGET void elu_rows(const scalar_t* const* srcs, int64_t n, float* dst, int64_t C, float alpha) {
  for (int64_t r = 0; r < n; ++r, dst += C) {
    if (srcs[r] == nullptr) {
      std::fill(dst, dst + C, 0.0f);
    } else {
      elu_row(srcs[r], dst, C, alpha);
    }
  }
}

template <typename scalar_t>
JF_TARGET void store_row(const float* src, scalar_t* dst, int64_t n) {  // n a multiple of W
  for (int64_t i = 0; i < n; i += W) vstore(dst + i, vload(src + i));
}

// The transposed convolution (ConvTransposeArgs, conv_transpose_walk) with float32 GEMMs.
template <typename scalar_t>
void conv_transpose_tiles(const ConvTransposeArgs<scalar_t>& p, int64_t begin, int64_t end) {
  conv_transpose_walk<float>(
      p, kRows, begin, end,
      [&](const scalar_t* const* srcs, int64_t n, float* act) { elu_rows(srcs, n, act, p.C, p.alpha); },
      [&](const float* act, int64_t rows, float* y) { tile_conv_columns(act, rows, p.C, p.taps, p.w, p.N, y); },
      store_row<scalar_t>);
}

// The residual block (resblock_walk) with float32 GEMMs.
template <typename scalar_t>
void resblock_tiles(const ResblockArgs<scalar_t>& p, int64_t begin, int64_t end) {
  resblock_walk<float>(
      p, kRows, begin, end,
      [&](const scalar_t* const* srcs, int64_t n, float* act) { elu_rows(srcs, n, act, p.C, p.alpha); },
      [&](const float* act, int64_t rows, float* hidden, const char* ahead, int64_t ahead_bytes) {
        tile_conv(act, rows, p.C, p.k, p.dilation, p.w1, p.H, hidden, ahead, ahead_bytes);
      },
      [&](const scalar_t* const* xs, int64_t rows, float* y) { add_rows(xs, rows, p.b2, y, p.C); },
      [&](float* hidden, int64_t rows, float* y) { elu_then_conv2(hidden, rows, p, y); }, store_row<scalar_t>);
}

template <typename scalar_t>
JF_TARGET void conv_tiles(const ConvArgs<scalar_t>& p, int64_t begin, int64_t end) {
  const int64_t C = p.C, span = (p.k - 1) * p.dilation;
  const int64_t tiles = (p.T + p.tile - 1) / p.tile;
  constexpr int kDotRows = 4;
  std::vector<float> act((p.tile + kDotRows + span) * C);
  std::vector<const scalar_t*> rows_of_x(p.tile + kDotRows + span);
  for (int64_t job = begin; job < end; ++job) {
    const int64_t b = job / tiles, t0 = (job % tiles) * p.tile;
    const int64_t valid = std::min(p.tile, p.T - t0);
    const int64_t rows = (valid + kDotRows - 1) / kDotRows * kDotRows;
    const scalar_t* x = p.x + b * p.T * C;
    padded_rows(p.map, x, C, t0 - p.pad_left, valid + span, rows + span, rows_of_x.data());
    elu_rows(rows_of_x.data(), rows + span, act.data(), C, p.alpha);
    scalar_t* out = p.out + (b * p.T + t0) * p.Cout;
    for (int64_t i = 0; i < rows; i += kDotRows) {
      for (int64_t o = 0; o < p.Cout; ++o) {
        V acc[kDotRows];
        for (int r = 0; r < kDotRows; ++r) acc[r] = vset1(0.0f);
        for (int64_t j = 0; j < p.k; ++j) {
          const float* wj = p.w + (o * p.k + j) * C;
          const float* aj = act.data() + (i + j * p.dilation) * C;
          for (int64_t c = 0; c < C; c += W) {
            const V wv = vload(wj + c);
            for (int r = 0; r < kDotRows; ++r) acc[r] = vfma(vload(aj + r * C + c), wv, acc[r]);
          }
        }
        for (int r = 0; r < kDotRows && i + r < valid; ++r) out[(i + r) * p.Cout + o] = scalar_t(vsum(acc[r]) + p.bias[o]);
      }
    }
  }
}

}  // namespace JF_ISA
