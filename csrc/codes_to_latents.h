// Shared by the CPU and CUDA bindings of jasco_fast::codes_to_latents: argument checks and the output
// allocation, so both devices accept and return exactly the same things. jasco_fast/ops.py's
// check_codes_to_latents states the same rules (ValueError in Python from a direct call: see stable.h).
#pragma once

#include <optional>

#include "stable.h"

namespace jasco_fast {

inline bool is_code_dtype(ScalarType t) { return t == kLong || t == kInt; }

inline bool is_codebook_float(ScalarType t) { return t == kFloat || t == kDouble || t == kHalf || t == kBFloat16; }

// The dtype of the result: the requested one, else the codebooks'.
inline ScalarType check_code_inputs(const Tensor& codes, const Tensor& codebooks, std::optional<ScalarType> dtype) {
  JF_CHECK_VALUE(codes.dim() == 3, "codes_to_latents: codes must be 3-D [B, K, T], got ", codes.dim(), "-D with shape ",
                 shape(codes));
  JF_CHECK_TYPE(is_code_dtype(codes.scalar_type()), "codes_to_latents: codes must be int64 or int32, got ",
                dtype_name(codes.scalar_type()));
  JF_CHECK_VALUE(codebooks.dim() == 3,
                 "codes_to_latents: codebooks must be 3-D [num_codebooks, codebook_size, D], "
                 "got shape ",
                 shape(codebooks));
  JF_CHECK_TYPE(is_codebook_float(codebooks.scalar_type()),
                "codes_to_latents: codebooks must be float32/float64/float16/bfloat16, got ",
                dtype_name(codebooks.scalar_type()));
  JF_CHECK_VALUE(same_device(codebooks, codes), "codes_to_latents: codebooks are on ", device_name(codebooks),
                 " but codes are on ", device_name(codes), "; put them on the same device");
  JF_CHECK_VALUE(codebooks.size(1) > 0 && codebooks.size(2) > 0,
                 "codes_to_latents: codebooks need codebook_size > 0 and D > 0, got shape ", shape(codebooks));
  const int64_t K = codes.size(1), N = codebooks.size(0);
  JF_CHECK_VALUE(K >= 1 && K <= N, "codes_to_latents: codes have K = ", K, " codebooks; this quantizer has ", N,
                 " (K must lie in [1, ", N, "]; the first K codebooks are used)");
  const ScalarType out = dtype.value_or(codebooks.scalar_type());
  JF_CHECK_TYPE(is_codebook_float(out), "codes_to_latents: dtype must be float32/float64/float16/bfloat16, got ",
                dtype_name(out));
  return out;
}

// [B, D, T]: contiguous, or channels-last (strides (T*D, 1, D), i.e. [B, T, D] memory).
inline Tensor make_code_output(const Tensor& codes, const Tensor& codebooks, ScalarType out_dtype, bool channels_last) {
  const auto B = codes.size(0), T = codes.size(2), D = codebooks.size(2);
  if (channels_last) return torch::stable::transpose(torch::stable::new_empty(codebooks, {B, T, D}, out_dtype), 1, 2);
  return torch::stable::new_empty(codebooks, {B, D, T}, out_dtype);
}

// The error for an out-of-range code at flat logical index i of codes [B, K, T].
inline void fail_bad_code(const Tensor& codes, int64_t i, int64_t value, int64_t codebook_size) {
  const int64_t K = codes.size(1), T = codes.size(2);
  const int64_t b = i / (K * T), k = (i / T) % K, t = i % T;
  JF_CHECK(false, "codes_to_latents: code ", value, " at [b=", b, ", k=", k, ", t=", t,
           "] is out of range: codes must lie in [0, ", codebook_size, ") (the codebook size)");
}

}  // namespace jasco_fast
