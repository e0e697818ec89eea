// Shared by the CPU and CUDA bindings of jasco_fast::denorm_transpose: argument checks and the
// output allocation, so both devices accept and return exactly the same things.
//
// jasco_fast/ops.py's check_denorm_transpose states the same rules in the same words (for the Python face, the
// fake kernel and the fallback); these stay for direct calls of the op (ValueError in Python: see ../stable.h).
#pragma once

#include <optional>
#include <string>

#include "stable.h"

namespace jasco_fast {

inline bool is_supported_float(ScalarType t) { return t == kFloat || t == kDouble || t == kHalf || t == kBFloat16; }

inline void check_statistic(const Tensor& s, const char* name, int64_t D, const Tensor& latents) {
  JF_CHECK_VALUE(same_device(s, latents), "denorm_transpose: ", name, " is on ", device_name(s), " but latents are on ",
                 device_name(latents), "; put them on the same device");
  JF_CHECK_TYPE(is_supported_float(s.scalar_type()), "denorm_transpose: ", name,
                " must be a floating-point tensor (float32/float64/float16/bfloat16), got ",
                dtype_name(s.scalar_type()));
  JF_CHECK_VALUE(s.dim() <= 1 && (s.numel() == 1 || s.numel() == D), "denorm_transpose: ", name,
                 " must be a scalar (0-d or 1 element) or have D = ", D, " elements, got shape ", shape(s));
}

// The dtype of the result: the requested one, else the input's.
inline ScalarType check_inputs(const Tensor& latents, const Tensor& mean, const Tensor& std,
                               std::optional<ScalarType> dtype) {
  JF_CHECK_VALUE(latents.dim() == 3, "denorm_transpose: latents must be 3-D [B, T, D], got ", latents.dim(),
                 "-D with shape ", shape(latents));
  JF_CHECK_TYPE(is_supported_float(latents.scalar_type()),
                "denorm_transpose: latents must be float32/float64/float16/bfloat16, got ",
                dtype_name(latents.scalar_type()));
  const int64_t D = latents.size(2);
  JF_CHECK_VALUE(D > 0, "denorm_transpose: latents need D > 0 channels, got shape ", shape(latents));
  check_statistic(mean, "mean", D, latents);
  check_statistic(std, "std", D, latents);
  const ScalarType out = dtype.value_or(latents.scalar_type());
  JF_CHECK_TYPE(is_supported_float(out), "denorm_transpose: dtype must be float32/float64/float16/bfloat16, got ",
                dtype_name(out));
  return out;
}

// [B, D, T]: contiguous, or channels-last (strides (T*D, 1, D), i.e. [B, T, D] memory).
inline Tensor make_output(const Tensor& latents, ScalarType out_dtype, bool channels_last) {
  const auto B = latents.size(0), T = latents.size(1), D = latents.size(2);
  if (channels_last) return torch::stable::transpose(torch::stable::new_empty(latents, {B, T, D}, out_dtype), 1, 2);
  return torch::stable::new_empty(latents, {B, D, T}, out_dtype);
}

}  // namespace jasco_fast
