// CPU kernel of jasco_fast::codes_to_latents: out[b, :, t] = sum over k < K of codebooks[k, codes[b, k, t], :],
// accumulated in codebook order in float32 (float64 when the codebooks or the output are float64), rounded
// once to the output dtype, written channels-last or as contiguous [B, D, T], in one pass.
//
// Out-of-range codes are never read through: each one is recorded (the smallest flat index wins) and
// skipped, and the call fails after the pass with the position and the value.
#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "../codes_to_latents.h"

namespace jasco_fast {
namespace {

struct CodeGeometry {
  int64_t B, K, T, S, D;
  int64_t sb, sk, st;  // element strides of codes [B, K, T]
};

// Time steps per tile of the [B, D, T] (transposing) path: the tile's sums live in a small buffer.
constexpr int64_t kTileT = 64;

void note_bad(std::atomic<int64_t>& first_bad, int64_t index) {
  int64_t seen = first_bad.load(std::memory_order_relaxed);
  while (index < seen && !first_bad.compare_exchange_weak(seen, index, std::memory_order_relaxed)) {
  }
}

// The sum of one time step's K codebook rows into acc[0, D); a bad code is noted in first_bad and skipped.
template <typename code_t, typename cb_t, typename acc_t>
inline void gather_sum(const code_t* codes_bt, const cb_t* codebooks, const CodeGeometry& g, acc_t* acc,
                       std::atomic<int64_t>& first_bad, int64_t flat_bt) {
  std::fill(acc, acc + g.D, acc_t(0));
  for (int64_t k = 0; k < g.K; ++k) {
    const int64_t code = static_cast<int64_t>(codes_bt[k * g.sk]);
    if (code < 0 || code >= g.S) {
      note_bad(first_bad, flat_bt + k * g.T);
      continue;
    }
    const cb_t* row = codebooks + (k * g.S + code) * g.D;
    for (int64_t d = 0; d < g.D; ++d) acc[d] += static_cast<acc_t>(row[d]);
  }
}

template <typename code_t, typename cb_t, typename out_t, typename acc_t>
void run_typed(const code_t* codes, const cb_t* codebooks, out_t* out, const CodeGeometry& g, bool channels_last,
               std::atomic<int64_t>& first_bad) {
  if (channels_last) {  // out memory [B, T, D]: one row of D per time step
    const int64_t grain = std::max<int64_t>(1, kGrainSize / (g.D * g.K));
    torch::stable::parallel_for(0, g.B * g.T, grain, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> acc(g.D);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t b = r / g.T, t = r % g.T;
        gather_sum(codes + b * g.sb + t * g.st, codebooks, g, acc.data(), first_bad, b * g.K * g.T + t);
        out_t* dst = out + r * g.D;
        for (int64_t d = 0; d < g.D; ++d) dst[d] = static_cast<out_t>(acc[d]);
      }
    });
    return;
  }
  // out [B, D, T] contiguous: sums of kTileT time steps into a [kTileT, D] buffer, written out along T
  const int64_t nt = (g.T + kTileT - 1) / kTileT;
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (kTileT * g.D * g.K));
  torch::stable::parallel_for(0, g.B * nt, grain, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> tile(kTileT * g.D);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / nt, t0 = i % nt * kTileT, tn = std::min(kTileT, g.T - t0);
      for (int64_t j = 0; j < tn; ++j) {
        const int64_t t = t0 + j;
        gather_sum(codes + b * g.sb + t * g.st, codebooks, g, tile.data() + j * g.D, first_bad, b * g.K * g.T + t);
      }
      out_t* dst = out + b * g.D * g.T + t0;
      for (int64_t d = 0; d < g.D; ++d, dst += g.T)
        for (int64_t j = 0; j < tn; ++j) dst[j] = static_cast<out_t>(tile[j * g.D + d]);
    }
  });
}

template <typename acc_t>
void run(const Tensor& codes, const Tensor& codebooks, Tensor& out, bool channels_last,
         std::atomic<int64_t>& first_bad) {
  const CodeGeometry g{codes.size(0),     codes.size(1),   codes.size(2),   codebooks.size(1),
                       codebooks.size(2), codes.stride(0), codes.stride(1), codes.stride(2)};
  const auto with_codes = [&](auto code_tag) {
    using code_t = decltype(code_tag);
    const code_t* c = codes.const_data_ptr<code_t>();
    dispatch_float(codebooks.scalar_type(), "codes_to_latents", [&](auto cb_tag) {
      using cb_t = decltype(cb_tag);
      const cb_t* cb = codebooks.const_data_ptr<cb_t>();
      dispatch_float(out.scalar_type(), "codes_to_latents", [&](auto out_tag) {
        using out_t = decltype(out_tag);
        run_typed<code_t, cb_t, out_t, acc_t>(c, cb, out.mutable_data_ptr<out_t>(), g, channels_last, first_bad);
      });
    });
  };
  if (codes.scalar_type() == kLong) {
    with_codes(int64_t{});
  } else {
    with_codes(int32_t{});
  }
}

Tensor codes_to_latents_cpu(Tensor codes, Tensor codebooks, std::optional<ScalarType> dtype, bool channels_last) {
  const ScalarType out_dtype = check_code_inputs(codes, codebooks, dtype);
  Tensor out = make_code_output(codes, codebooks, out_dtype, channels_last);
  if (out.numel() == 0) return out;
  const Tensor cb = codebooks.is_contiguous() ? codebooks : torch::stable::contiguous(codebooks);
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  if (cb.scalar_type() == kDouble || out_dtype == kDouble) {
    run<double>(codes, cb, out, channels_last, first_bad);
  } else {
    run<float>(codes, cb, out, channels_last, first_bad);
  }
  const int64_t bad = first_bad.load();
  if (bad != std::numeric_limits<int64_t>::max()) {
    const int64_t K = codes.size(1), T = codes.size(2);
    const int64_t b = bad / (K * T), k = (bad / T) % K, t = bad % T;
    const int64_t at = b * codes.stride(0) + k * codes.stride(1) + t * codes.stride(2);
    const int64_t value =
        codes.scalar_type() == kLong ? codes.const_data_ptr<int64_t>()[at] : codes.const_data_ptr<int32_t>()[at];
    fail_bad_code(codes, bad, value, codebooks.size(1));
  }
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CPU, m) { m.impl("codes_to_latents", TORCH_BOX(&codes_to_latents_cpu)); }

}  // namespace jasco_fast
