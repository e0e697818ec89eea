// jasco_fast::lstm_skip: the SEANet LSTM block, y = lstm(x) + x, with an optional initial state and the
// state after the first `state_frames` frames (the frames a chunk commits; the frames after them are
// look-ahead that the next chunk recomputes from that state).
//
// Device-generic: one CompositeExplicitAutograd kernel serves every device. On CPU at small batch it runs the
// recurrence kernel (csrc/cpu/lstm_recurrence.cpp: float32 state and arithmetic, W_hh streamed in its own
// dtype, as bfloat16 or as int8); everywhere else ATen's LSTM (oneDNN on CPU, cuDNN on CUDA).
// recurrent_dtype = bfloat16 / int8 stores the recurrent matrices in that format (lstm_recurrence.h); where
// the kernel does not run, ATen's LSTM computes with the stored values converted back to the weights' dtype.
// Inference only: there is no autograd formula.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "lstm_recurrence.h"

namespace jasco_fast {
namespace {

// One ATen LSTM call over a batch-first [B, t, C] piece, from state (h, c); returns (output, h, c).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_lstm(const at::Tensor& piece, const at::Tensor& h,
                                                        const at::Tensor& c, at::TensorList weights,
                                                        int64_t num_layers) {
  // contiguous: the oneDNN LSTM is ~10x slower on a strided [B, t, C] view
  return at::lstm(piece.contiguous(), {h, c}, weights, /*has_biases=*/true, num_layers, /*dropout=*/0.0,
                  /*train=*/false, /*bidirectional=*/false, /*batch_first=*/true);
}

void check_state(const std::optional<at::Tensor>& s, const char* name, const at::Tensor& seq, int64_t num_layers) {
  if (!s.has_value()) return;
  TORCH_CHECK_VALUE(s->dim() == 3 && s->size(0) == num_layers && s->size(1) == seq.size(0) && s->size(2) == seq.size(2),
                    "lstm_skip: ", name, " must be [num_layers, B, C] = [", num_layers, ", ", seq.size(0), ", ",
                    seq.size(2), "], got ", s->sizes());
  TORCH_CHECK_TYPE(s->scalar_type() == seq.scalar_type() && s->device() == seq.device(), "lstm_skip: ", name,
                   " must have seq's dtype and device (", seq.scalar_type(), ", ", seq.device(), "), got ",
                   s->scalar_type(), ", ", s->device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_skip(const at::Tensor& seq, at::TensorList weights,
                                                         int64_t num_layers, const std::optional<at::Tensor>& h0,
                                                         const std::optional<at::Tensor>& c0,
                                                         std::optional<int64_t> state_frames,
                                                         std::optional<at::ScalarType> recurrent_dtype,
                                                         const std::optional<at::Tensor>& packed) {
  TORCH_CHECK_VALUE(seq.dim() == 3, "lstm_skip: seq must be 3-D [B, T, C], got shape ", seq.sizes());
  TORCH_CHECK_VALUE(num_layers >= 1, "lstm_skip: num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) == 4 * num_layers,
                    "lstm_skip: expected 4 * num_layers = ", 4 * num_layers,
                    " weights (w_ih, w_hh, b_ih, b_hh per layer), got ", weights.size());
  TORCH_CHECK_VALUE(h0.has_value() == c0.has_value(), "lstm_skip: give both h0 and c0, or neither");
  check_state(h0, "h0", seq, num_layers);
  check_state(c0, "c0", seq, num_layers);
  const int64_t T = seq.size(1);
  const int64_t n = state_frames.value_or(T);
  TORCH_CHECK_VALUE(0 <= n && n <= T, "lstm_skip: state_frames must lie in [0, T] = [0, ", T, "], got ", n);
  const at::ScalarType recurrent =
      recurrent_format(recurrent_dtype, weights.size() >= 2 ? weights[1].scalar_type() : at::kFloat, "lstm_skip");
  if (packed.has_value()) check_lstm_pack(*packed, weights, num_layers, recurrent);

  const auto state_shape = std::vector<int64_t>{num_layers, seq.size(0), seq.size(2)};
  at::Tensor h = h0.has_value() ? *h0 : at::zeros(state_shape, seq.options());
  at::Tensor c = c0.has_value() ? *c0 : at::zeros(state_shape, seq.options());
  if (lstm_recurrence_cpu_applies(seq, weights, num_layers)) {
    return lstm_skip_recurrence_cpu(seq, weights, num_layers, h, c, n, recurrent, packed);
  }
  std::vector<at::Tensor> stored;
  if (recurrent != weights[1].scalar_type()) {  // ATen's LSTM with the stored W_hh values
    stored = weights.vec();
    for (int64_t l = 0; l < num_layers; ++l) {
      const at::Tensor& w_hh = weights[4 * l + 1];
      stored[4 * l + 1] =
          recurrent == at::kChar ? dequantized_int8_rows(w_hh) : w_hh.to(recurrent).to(w_hh.scalar_type());
    }
    weights = stored;
  }
  // [B, T, C] contiguous, what the next convolution reads (batch-first LSTM output is time-major in memory)
  at::Tensor out = at::empty(seq.sizes(), seq.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor h_n, c_n;
  if (n == T) {
    auto [y, hy, cy] = run_lstm(seq, h, c, weights, num_layers);
    at::add_out(out, y, seq);
    return {out, hy, cy};
  }
  if (n == 0) {  // outputs must not alias inputs
    h_n = h.clone();
    c_n = c.clone();
  } else {  // the committed frames, then the look-ahead from the committed state
    auto [y, hy, cy] = run_lstm(seq.narrow(1, 0, n), h, c, weights, num_layers);
    auto head = out.narrow(1, 0, n);
    at::add_out(head, y, seq.narrow(1, 0, n));
    h = h_n = hy;
    c = c_n = cy;
  }
  auto [y, hy, cy] = run_lstm(seq.narrow(1, n, T - n), h, c, weights, num_layers);
  auto tail = out.narrow(1, n, T - n);
  at::add_out(tail, y, seq.narrow(1, n, T - n));
  return {out, h_n, c_n};
}

}  // namespace

at::ScalarType recurrent_format(std::optional<at::ScalarType> recurrent_dtype, at::ScalarType own, const char* op) {
  if (!recurrent_dtype.has_value() || *recurrent_dtype == own) return own;
  TORCH_CHECK_TYPE(*recurrent_dtype == at::kChar || (*recurrent_dtype == at::kBFloat16 && own == at::kFloat), op,
                   ": recurrent_dtype must be None, the weights' dtype, torch.int8, or torch.bfloat16 "
                   "with float32 weights; got ",
                   *recurrent_dtype, " with ", own, " weights");
  return *recurrent_dtype;
}

at::Tensor dequantized_int8_rows(const at::Tensor& w_hh) {
  // the same float32 arithmetic as the CPU kernel's packing (quantize_row)
  const at::Tensor w = w_hh.to(at::kFloat);
  at::Tensor scale = w.abs().amax({1}, /*keepdim=*/true) / 127;
  scale = at::where(scale == 0, at::ones_like(scale), scale);
  return (w / scale).round().clamp(-127, 127).mul(scale).to(w_hh.scalar_type());
}

TORCH_LIBRARY_IMPL(jasco_fast, CompositeExplicitAutograd, m) { m.impl("lstm_skip", &lstm_skip); }

}  // namespace jasco_fast
