// The CPU kernel of jasco_fast::lstm_skip at small batch (csrc/cpu/lstm_recurrence.cpp), and the 8-bit
// recurrent weight format that every device shares.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include "stable.h"

namespace jasco_fast {

// Batches up to this size run the recurrence kernel on CPU: there every step streams the recurrent matrix
// for a few columns (bandwidth-bound). Larger batches are GEMM-bound and keep ATen's LSTM (oneDNN).
constexpr int64_t kLstmRecurrenceMaxBatch = 8;

// Whether lstm_skip_recurrence_cpu takes these arguments: CPU, float32 or bfloat16 seq and weights of that
// dtype, 1 <= B <= kLstmRecurrenceMaxBatch, T >= 1, C -> C weights of the expected shapes.
bool lstm_recurrence_cpu_applies(const Tensor& seq, const std::vector<Tensor>& weights, int64_t num_layers);

// lstm(seq) + seq from state (h0, c0) ([num_layers, B, C], seq's dtype), and the state after the first
// state_frames frames: the op's semantics. State and arithmetic in float32; outputs in seq's dtype.
// recurrent: the format of the recurrent matrices: seq's dtype, kBFloat16 (float32 weights rounded to
// bfloat16) or kChar (int8 as dequantized_int8_rows describes). packed: the recurrent matrices from
// jasco_fast::lstm_pack for that format (checked: check_lstm_pack); absent, the call packs them itself.
std::tuple<Tensor, Tensor, Tensor> lstm_skip_recurrence_cpu(const Tensor& seq, const std::vector<Tensor>& weights,
                                                            int64_t num_layers, const Tensor& h0, const Tensor& c0,
                                                            int64_t state_frames, ScalarType recurrent,
                                                            const std::optional<Tensor>& packed);

// The format the recurrent matrices of `own`-dtype weights are used in (op: the name errors start with):
// `own` (recurrent_dtype None or `own`), bfloat16 (from float32 weights) or kChar; else a TypeError.
ScalarType recurrent_format(std::optional<ScalarType> recurrent_dtype, ScalarType own, const char* op);

// Raises a ValueError unless `packed` is a pack (jasco_fast::lstm_pack) of the weights' W_hh shapes and dtype in
// the layout this process packs `recurrent` in (the format, and the tile width of this CPU).
void check_lstm_pack(const Tensor& packed, const std::vector<Tensor>& weights, int64_t num_layers,
                     ScalarType recurrent);

// The 8-bit recurrent weight format: symmetric int8 with one float32 scale per output row,
// scale = max |w[r, :]| / 127 (1 for an all-zero row), q = round-half-even(w / scale) in float32 arithmetic.
// Returns w_hh replaced by q * scale in w_hh's dtype: what devices without the CPU kernel compute with.
Tensor dequantized_int8_rows(const Tensor& w_hh);

// out = y + seq (the skip connection, one rounding to out's dtype): out [B, T, C] contiguous, seq of out's dtype,
// y of seq's dtype or float32 (float32 sum), any strides, all on one device.
void skip_sum_into(Tensor& out, const Tensor& y, const Tensor& seq);

}  // namespace jasco_fast
