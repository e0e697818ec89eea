// Shared by the CPU and CUDA bindings of jasco_fast::denorm_transpose: argument checks and the
// output allocation, so both devices accept and return exactly the same things.
//
// jasco_fast/ops.py's check_denorm_transpose states the same rules in the same words (for the Python face, the
// fake kernel and the fallback); these stay for direct calls of the op. TORCH_CHECK_VALUE / TORCH_CHECK_TYPE
// surface in Python as ValueError / TypeError.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace jasco_fast {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// "torch.int32", as Python users spell the dtype (at::ScalarType prints as "Int").
inline std::string dtype_name(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

inline void check_statistic(const at::Tensor& s, const char* name, int64_t D, const at::Tensor& latents) {
  TORCH_CHECK_VALUE(s.device() == latents.device(), "denorm_transpose: ", name, " is on ", s.device(),
                    " but latents are on ", latents.device(), "; put them on the same device");
  TORCH_CHECK_TYPE(is_supported_float(s.scalar_type()), "denorm_transpose: ", name,
                   " must be a floating-point tensor (float32/float64/float16/bfloat16), got ",
                   dtype_name(s.scalar_type()));
  TORCH_CHECK_VALUE(s.dim() <= 1 && (s.numel() == 1 || s.numel() == D), "denorm_transpose: ", name,
                    " must be a scalar (0-d or 1 element) or have D = ", D, " elements, got shape ", s.sizes());
}

// The dtype of the result: the requested one, else the input's.
inline at::ScalarType check_inputs(const at::Tensor& latents, const at::Tensor& mean, const at::Tensor& std,
                                   std::optional<at::ScalarType> dtype) {
  TORCH_CHECK_VALUE(latents.dim() == 3, "denorm_transpose: latents must be 3-D [B, T, D], got ", latents.dim(),
                    "-D with shape ", latents.sizes());
  TORCH_CHECK_TYPE(is_supported_float(latents.scalar_type()),
                   "denorm_transpose: latents must be float32/float64/float16/bfloat16, got ",
                   dtype_name(latents.scalar_type()));
  const int64_t D = latents.size(2);
  TORCH_CHECK_VALUE(D > 0, "denorm_transpose: latents need D > 0 channels, got shape ", latents.sizes());
  check_statistic(mean, "mean", D, latents);
  check_statistic(std, "std", D, latents);
  const at::ScalarType out = dtype.value_or(latents.scalar_type());
  TORCH_CHECK_TYPE(is_supported_float(out), "denorm_transpose: dtype must be float32/float64/float16/bfloat16, got ",
                   dtype_name(out));
  return out;
}

// [B, D, T]: contiguous, or channels-last (strides (T*D, 1, D), i.e. [B, T, D] memory).
inline at::Tensor make_output(const at::Tensor& latents, at::ScalarType out_dtype, bool channels_last) {
  const auto B = latents.size(0), T = latents.size(1), D = latents.size(2);
  auto opts = latents.options().dtype(out_dtype);
  return channels_last ? at::empty({B, T, D}, opts).transpose(1, 2) : at::empty({B, D, T}, opts);
}

}  // namespace jasco_fast
