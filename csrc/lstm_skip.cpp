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
#include <cmath>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "lstm_recurrence.h"
#include "stable.h"

namespace jasco_fast {
namespace {

// One ATen LSTM call over a batch-first [B, t, C] piece, from state (h, c); returns (output, h, c).
std::tuple<Tensor, Tensor, Tensor> run_lstm(const Tensor& piece, const Tensor& h, const Tensor& c,
                                            const std::vector<Tensor>& weights, int64_t num_layers) {
  // contiguous: the oneDNN LSTM is ~10x slower on a strided [B, t, C] view
  auto s = call_op("aten::lstm", "input", torch::stable::contiguous(piece), std::vector<Tensor>{h, c}, weights,
                   /*has_biases=*/true, num_layers, /*dropout=*/0.0, /*train=*/false, /*bidirectional=*/false,
                   /*batch_first=*/true);
  Tensor y = result(s, 0), hy = result(s, 1), cy = result(s, 2);
  return {y, hy, cy};
}

// A 0-dim float32 tensor on t's device: the Scalar operand of an ATen op, which the stable ABI's dispatcher
// calls cannot pass (they carry no Scalar arguments).
Tensor float_scalar(double value, const Tensor& t) {
  return torch::stable::full({}, value, kFloat, std::nullopt, t.device());
}

// An ATen op of one (call1) or two (call2) tensors with one tensor result, through the dispatcher.
Tensor call1(const char* name, const char* overload, const Tensor& a) {
  auto s = call_op(name, overload, a);
  return result(s);
}

Tensor call2(const char* name, const char* overload, const Tensor& a, const Tensor& b) {
  auto s = call_op(name, overload, a, b);
  return result(s);
}

void check_state(const std::optional<Tensor>& s, const char* name, const Tensor& seq, int64_t num_layers) {
  if (!s.has_value()) return;
  JF_CHECK_VALUE(s->dim() == 3 && s->size(0) == num_layers && s->size(1) == seq.size(0) && s->size(2) == seq.size(2),
                 "lstm_skip: ", name, " must be [num_layers, B, C] = [", num_layers, ", ", seq.size(0), ", ",
                 seq.size(2), "], got ", shape(*s));
  JF_CHECK_TYPE(s->scalar_type() == seq.scalar_type() && same_device(*s, seq), "lstm_skip: ", name,
                " must have seq's dtype and device (", dtype_name(seq.scalar_type()), ", ", device_name(seq), "), got ",
                dtype_name(s->scalar_type()), ", ", device_name(*s));
}

// The CPU loop of skip_sum_into: rows (b, t) in parallel, in acc_t (float32 for 16-bit types) as ATen's add.
template <typename out_t, typename y_t>
void skip_sum_cpu(Tensor& out, const Tensor& y, const Tensor& seq) {
  using acc_t = std::conditional_t<std::is_same_v<out_t, double>, double, float>;
  const int64_t B = out.size(0), T = out.size(1), C = out.size(2);
  out_t* o = out.mutable_data_ptr<out_t>();
  const y_t* yp = y.const_data_ptr<y_t>();
  const out_t* sp = seq.const_data_ptr<out_t>();
  const int64_t ob = out.stride(0), ot = out.stride(1);  // out.stride(2) == 1
  const int64_t yb = y.stride(0), yt = y.stride(1), yc = y.stride(2);
  const int64_t sb = seq.stride(0), st = seq.stride(1), sc = seq.stride(2);
  torch::stable::parallel_for(
      0, B * T, std::max<int64_t>(1, kGrainSize / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t b = r / T, t = r % T;
          out_t* orow = o + b * ob + t * ot;
          const y_t* yrow = yp + b * yb + t * yt;
          const out_t* srow = sp + b * sb + t * st;
          if (yc == 1 && sc == 1) {  // the common layouts: a loop the compiler vectorises
            for (int64_t c = 0; c < C; ++c)
              orow[c] = static_cast<out_t>(static_cast<acc_t>(yrow[c]) + static_cast<acc_t>(srow[c]));
          } else {
            for (int64_t c = 0; c < C; ++c)
              orow[c] = static_cast<out_t>(static_cast<acc_t>(yrow[c * yc]) + static_cast<acc_t>(srow[c * sc]));
          }
        }
      });
}

std::tuple<Tensor, Tensor, Tensor> lstm_skip(const Tensor& seq, const std::vector<Tensor>& weights_in,
                                             int64_t num_layers, const std::optional<Tensor>& h0,
                                             const std::optional<Tensor>& c0, std::optional<int64_t> state_frames,
                                             std::optional<ScalarType> recurrent_dtype,
                                             const std::optional<Tensor>& packed) {
  JF_CHECK_VALUE(seq.dim() == 3, "lstm_skip: seq must be 3-D [B, T, C], got shape ", shape(seq));
  JF_CHECK_VALUE(num_layers >= 1, "lstm_skip: num_layers must be >= 1, got ", num_layers);
  JF_CHECK_VALUE(static_cast<int64_t>(weights_in.size()) == 4 * num_layers,
                 "lstm_skip: expected 4 * num_layers = ", 4 * num_layers,
                 " weights (w_ih, w_hh, b_ih, b_hh per layer), got ", weights_in.size());
  JF_CHECK_VALUE(h0.has_value() == c0.has_value(), "lstm_skip: give both h0 and c0, or neither");
  check_state(h0, "h0", seq, num_layers);
  check_state(c0, "c0", seq, num_layers);
  const int64_t T = seq.size(1);
  const int64_t n = state_frames.value_or(T);
  JF_CHECK_VALUE(0 <= n && n <= T, "lstm_skip: state_frames must lie in [0, T] = [0, ", T, "], got ", n);
  const ScalarType recurrent =
      recurrent_format(recurrent_dtype, weights_in.size() >= 2 ? weights_in[1].scalar_type() : kFloat, "lstm_skip");
  if (packed.has_value()) check_lstm_pack(*packed, weights_in, num_layers, recurrent);

  const auto state_shape = std::vector<int64_t>{num_layers, seq.size(0), seq.size(2)};
  Tensor h = h0.has_value() ? *h0 : torch::stable::new_zeros(seq, state_shape);
  Tensor c = c0.has_value() ? *c0 : torch::stable::new_zeros(seq, state_shape);
  if (lstm_recurrence_cpu_applies(seq, weights_in, num_layers)) {
    return lstm_skip_recurrence_cpu(seq, weights_in, num_layers, h, c, n, recurrent, packed);
  }
  std::vector<Tensor> stored;
  const std::vector<Tensor>* weights = &weights_in;
  if (recurrent != weights_in[1].scalar_type()) {  // ATen's LSTM with the stored W_hh values
    stored = weights_in;
    for (int64_t l = 0; l < num_layers; ++l) {
      const Tensor& w_hh = weights_in[4 * l + 1];
      stored[4 * l + 1] = recurrent == kChar
                              ? dequantized_int8_rows(w_hh)
                              : torch::stable::to(torch::stable::to(w_hh, recurrent), w_hh.scalar_type());
    }
    weights = &stored;
  }
  // [B, T, C] contiguous, what the next convolution reads (batch-first LSTM output is time-major in memory)
  Tensor out = torch::stable::empty(seq.sizes(), seq.scalar_type(), std::nullopt, seq.device(), std::nullopt,
                                    MemoryFormat::Contiguous);
  Tensor seq_v = seq;  // torch::stable::narrow takes a non-const tensor
  if (n == T) {
    auto [y, hy, cy] = run_lstm(seq, h, c, *weights, num_layers);
    skip_sum_into(out, y, seq);
    return {out, hy, cy};
  }
  Tensor h_n, c_n;
  if (n == 0) {  // outputs must not alias inputs
    h_n = torch::stable::clone(h);
    c_n = torch::stable::clone(c);
  } else {  // the committed frames, then the look-ahead from the committed state
    const Tensor seq_head = torch::stable::narrow(seq_v, 1, 0, n);
    auto [y, hy, cy] = run_lstm(seq_head, h, c, *weights, num_layers);
    Tensor head = torch::stable::narrow(out, 1, 0, n);
    skip_sum_into(head, y, seq_head);
    h = h_n = hy;
    c = c_n = cy;
  }
  const Tensor seq_tail = torch::stable::narrow(seq_v, 1, n, T - n);
  auto [y, hy, cy] = run_lstm(seq_tail, h, c, *weights, num_layers);
  Tensor tail = torch::stable::narrow(out, 1, n, T - n);
  skip_sum_into(tail, y, seq_tail);
  return {out, h_n, c_n};
}

}  // namespace

ScalarType recurrent_format(std::optional<ScalarType> recurrent_dtype, ScalarType own, const char* op) {
  if (!recurrent_dtype.has_value() || *recurrent_dtype == own) return own;
  JF_CHECK_TYPE(*recurrent_dtype == kChar || (*recurrent_dtype == kBFloat16 && own == kFloat), op,
                ": recurrent_dtype must be None, the weights' dtype, torch.int8, or torch.bfloat16 "
                "with float32 weights; got ",
                dtype_name(*recurrent_dtype), " with ", dtype_name(own), " weights");
  return *recurrent_dtype;
}

Tensor dequantized_int8_rows(const Tensor& w_hh) {
  // the same float32 arithmetic as the CPU kernel's packing (quantize_row); ATen's Scalar operands (/ 127,
  // clamp(-127, 127), ones_like) as 0-dim float32 tensors: the same float32 operations
  const Tensor w = torch::stable::to(w_hh, kFloat);
  Tensor scale = call2("aten::div", "Tensor", torch::stable::amax(call1("aten::abs", "", w), 1, /*keepdim=*/true),
                       float_scalar(127, w));
  const Tensor zero_rows = call2("aten::eq", "Tensor", scale, float_scalar(0, w));
  auto s = call_op("aten::where", "self", zero_rows, float_scalar(1, w), scale);
  scale = result(s);
  auto clamped = call_op("aten::clamp", "Tensor", call1("aten::round", "", call2("aten::div", "Tensor", w, scale)),
                         std::optional<Tensor>(float_scalar(-127, w)), std::optional<Tensor>(float_scalar(127, w)));
  return torch::stable::to(call2("aten::mul", "Tensor", result(clamped), scale), w_hh.scalar_type());
}

void skip_sum_into(Tensor& out, const Tensor& y, const Tensor& seq) {
  if (!out.is_cpu()) {
    // seq - (-1) y is ATen's seq + y (sub is add with -alpha): the stable ABI's dispatcher calls carry no
    // Scalar, so aten::add.out (alpha) is out of reach; one more pass (the copy) off the CPU
    torch::stable::copy_(out, torch::stable::subtract(seq, y, -1.0));
    return;
  }
  const ScalarType dtype = out.scalar_type();
  if (y.scalar_type() == kFloat && dtype != kFloat) {
    JF_CHECK(dtype == kBFloat16, "skip_sum_into: float32 y with ", dtype_name(dtype), " seq");
    skip_sum_cpu<BFloat16, float>(out, y, seq);
    return;
  }
  dispatch_float(dtype, "lstm_skip", [&](auto tag) {
    using scalar_t = decltype(tag);
    skip_sum_cpu<scalar_t, scalar_t>(out, y, seq);
  });
}

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CompositeExplicitAutograd, m) { m.impl("lstm_skip", TORCH_BOX(&lstm_skip)); }

}  // namespace jasco_fast
