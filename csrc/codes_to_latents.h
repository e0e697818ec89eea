// Shared by the CPU and CUDA bindings of jasco_fast::codes_to_latents: argument checks and the output
// allocation, so both devices accept and return exactly the same things. jasco_fast/ops.py's
// check_codes_to_latents states the same rules; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as
// ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace jasco_fast {

inline bool is_code_dtype(at::ScalarType t) { return t == at::kLong || t == at::kInt; }

inline bool is_codebook_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The dtype of the result: the requested one, else the codebooks'.
inline at::ScalarType check_code_inputs(const at::Tensor& codes, const at::Tensor& codebooks,
                                        std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(codes.dim() == 3, "codes_to_latents: codes must be 3-D [B, K, T], got ", codes.dim(),
                    "-D with shape ", codes.sizes());
  TORCH_CHECK_TYPE(is_code_dtype(codes.scalar_type()), "codes_to_latents: codes must be int64 or int32, got ",
                   codes.scalar_type());
  TORCH_CHECK_VALUE(codebooks.dim() == 3,
                    "codes_to_latents: codebooks must be 3-D [num_codebooks, codebook_size, D], "
                    "got shape ",
                    codebooks.sizes());
  TORCH_CHECK_TYPE(is_codebook_float(codebooks.scalar_type()),
                   "codes_to_latents: codebooks must be float32/float64/float16/bfloat16, got ",
                   codebooks.scalar_type());
  TORCH_CHECK_VALUE(codebooks.device() == codes.device(), "codes_to_latents: codebooks are on ", codebooks.device(),
                    " but codes are on ", codes.device(), "; put them on the same device");
  TORCH_CHECK_VALUE(codebooks.size(1) > 0 && codebooks.size(2) > 0,
                    "codes_to_latents: codebooks need codebook_size > 0 and D > 0, got shape ", codebooks.sizes());
  const int64_t K = codes.size(1), N = codebooks.size(0);
  TORCH_CHECK_VALUE(K >= 1 && K <= N, "codes_to_latents: codes have K = ", K, " codebooks; this quantizer has ", N,
                    " (K must lie in [1, ", N, "]; the first K codebooks are used)");
  const at::ScalarType out = dtype.value_or(codebooks.scalar_type());
  TORCH_CHECK_TYPE(is_codebook_float(out), "codes_to_latents: dtype must be float32/float64/float16/bfloat16, got ",
                   out);
  return out;
}

// [B, D, T]: contiguous, or channels-last (strides (T*D, 1, D), i.e. [B, T, D] memory).
inline at::Tensor make_code_output(const at::Tensor& codes, const at::Tensor& codebooks, at::ScalarType out_dtype,
                                   bool channels_last) {
  const auto B = codes.size(0), T = codes.size(2), D = codebooks.size(2);
  auto opts = codebooks.options().dtype(out_dtype);
  return channels_last ? at::empty({B, T, D}, opts).transpose(1, 2) : at::empty({B, D, T}, opts);
}

// The error for an out-of-range code at flat logical index i of codes [B, K, T].
inline void fail_bad_code(const at::Tensor& codes, int64_t i, int64_t value, int64_t codebook_size) {
  const int64_t K = codes.size(1), T = codes.size(2);
  const int64_t b = i / (K * T), k = (i / T) % K, t = i % T;
  TORCH_CHECK(false, "codes_to_latents: code ", value, " at [b=", b, ", k=", k, ", t=", t,
              "] is out of range: codes must lie in [0, ", codebook_size, ") (the codebook size)");
}

}  // namespace jasco_fast
