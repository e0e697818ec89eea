// The extension's one window on PyTorch: its stable ABI (torch/csrc/stable, torch/headeronly), which a build
// against one torch keeps across later ones, plus the argument checks and names the kernels' messages use.
// Other ATen ops are called through the dispatcher (call_op below), never linked against.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace jasco_fast {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Device = torch::stable::Device;
using DeviceType = torch::headeronly::DeviceType;
using MemoryFormat = torch::headeronly::MemoryFormat;
using BFloat16 = c10::BFloat16;
using Half = c10::Half;

constexpr ScalarType kFloat = ScalarType::Float;
constexpr ScalarType kDouble = ScalarType::Double;
constexpr ScalarType kHalf = ScalarType::Half;
constexpr ScalarType kBFloat16 = ScalarType::BFloat16;
constexpr ScalarType kLong = ScalarType::Long;
constexpr ScalarType kInt = ScalarType::Int;
constexpr ScalarType kChar = ScalarType::Char;
constexpr ScalarType kByte = ScalarType::Byte;
constexpr ScalarType kBool = ScalarType::Bool;

// at::internal::GRAIN_SIZE: the work below which ATen keeps a loop on one thread.
constexpr int64_t kGrainSize = 32768;

template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

// Argument rules. The stable ABI carries C++ standard exceptions only: std::invalid_argument surfaces in Python as
// ValueError (pybind11's mapping) and nothing maps to TypeError, so the dtype rules (JF_CHECK_TYPE) raise ValueError
// from a direct call of the op. The Python faces, fake kernels and fallbacks state the same rules with TypeError
// for these (jasco_fast/ops.py, check_<op>); tests/ops/test_registration.py holds the two sides together.
// JF_CHECK: an internal invariant or a failed call (RuntimeError).
#define JF_CHECK_VALUE(cond, ...)                                             \
  do {                                                                        \
    if (!(cond)) throw std::invalid_argument(::jasco_fast::str(__VA_ARGS__)); \
  } while (0)
#define JF_CHECK_TYPE(cond, ...) JF_CHECK_VALUE(cond, __VA_ARGS__)
#define JF_CHECK(cond, ...)                                                \
  do {                                                                     \
    if (!(cond)) throw std::runtime_error(::jasco_fast::str(__VA_ARGS__)); \
  } while (0)

// "torch.float32", as Python users spell a dtype.
inline std::string dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::ComplexFloat: return "torch.complex64";
    case ScalarType::ComplexDouble: return "torch.complex128";
    default: return str("torch.", c10::toString(t));
  }
}

// "[2, 50, 128]", as torch.Size prints without its name.
inline std::string shape(const Tensor& t) {
  std::string out = "[";
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? ", " : "") + std::to_string(t.size(i));
  return out + "]";
}

// "cpu", "cuda:0", as torch.device prints.
inline std::string device_name(const Tensor& t) {
  const Device d = t.device();
  std::string type;
  switch (d.type()) {
    case DeviceType::CPU: type = "cpu"; break;
    case DeviceType::CUDA: type = "cuda"; break;
    case DeviceType::Meta: type = "meta"; break;
    case DeviceType::MPS: type = "mps"; break;
    case DeviceType::XPU: type = "xpu"; break;
    default: type = str("device type ", static_cast<int>(d.type())); break;
  }
  return d.index() >= 0 && d.type() != DeviceType::CPU ? str(type, ":", static_cast<int>(d.index())) : type;
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.device().type() == b.device().type() && a.get_device_index() == b.get_device_index();
}

// f(T{}) for the floating dtype t (float32, float64, float16, bfloat16): AT_DISPATCH_FLOATING_TYPES_AND2's job.
template <typename F>
void dispatch_float(ScalarType t, const char* op, F&& f) {
  switch (t) {
    case ScalarType::Float: f(float{}); return;
    case ScalarType::Double: f(double{}); return;
    case ScalarType::Half: f(Half{}); return;
    case ScalarType::BFloat16: f(BFloat16{}); return;
    default: JF_CHECK_TYPE(false, op, ": unsupported dtype ", dtype_name(t));
  }
}

// Calls the registered op `name`.`overload` through the dispatcher with `args` (each converted to a StableIValue)
// and returns the stack, which then holds the op's results (take each with `result`).
template <typename... Args>
std::array<StableIValue, std::max<size_t>(sizeof...(Args), 3)> call_op(const char* name, const char* overload,
                                                                       const Args&... args) {
  std::array<StableIValue, std::max<size_t>(sizeof...(Args), 3)> stack{torch::stable::detail::from(args)...};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return stack;
}

// The Tensor result `i` of a call_op stack (each result must be taken exactly once: the stack owns it until then).
template <size_t N>
Tensor result(std::array<StableIValue, N>& stack, size_t i = 0) {
  return torch::stable::detail::to<Tensor>(stack[i]);
}

}  // namespace jasco_fast
