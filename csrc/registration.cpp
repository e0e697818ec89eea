// The schemas of jasco_fast's ops, defined once; each device file registers its kernels.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import jasco_fast._C` loads this shared library, which runs the registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(jasco_fast, m) {
  // needs_fixed_stride_order: inductor must keep the strides the kernel returns (contiguous [B, D, T] or
  // channels-last), not restride the output.
  m.def(
      "denorm_transpose(Tensor latents, Tensor mean, Tensor std, ScalarType? dtype=None, "
      "bool channels_last=False) -> Tensor",
      {at::Tag::needs_fixed_stride_order});
  // What the CPU kernels' run-time dispatch chose on this machine: "avx2+f16c" or "portable" (`jasco-fast info`).
  m.def("cpu_fast_path() -> str");
  // The arithmetic of the CPU LSTM kernel's int8 recurrent matvec on this machine: "avx512_vnni", "avx2_int16"
  // or "float32" (csrc/cpu/lstm_recurrence.cpp, lstm_int8_matvec).
  m.def("lstm_int8_matvec() -> str");

  // lstm(seq) + seq for a batch-first unidirectional LSTM with biases (weights: w_ih, w_hh, b_ih, b_hh per
  // layer), from state (h0, c0) (zeros when absent; [num_layers, B, C]); also returns the state after the
  // first `state_frames` frames (default: all). Outputs: y [B, T, C] contiguous, h, c. recurrent_dtype:
  // None (or the weights' dtype) uses W_hh as given; torch.bfloat16 (float32 weights) rounds each W_hh to
  // bfloat16; torch.int8 quantises it to int8 with a float32 scale per row (csrc/lstm_recurrence.h). On CPU
  // at B <= 8 the arithmetic is float32 whatever the dtypes (csrc/cpu/lstm_recurrence.cpp).
  // packed: the recurrent matrices from lstm_pack (None: the call packs them itself).
  m.def(
      "lstm_skip(Tensor seq, Tensor[] weights, int num_layers, Tensor? h0=None, Tensor? c0=None, "
      "int? state_frames=None, ScalarType? recurrent_dtype=None, Tensor? packed=None) -> (Tensor, Tensor, Tensor)",
      {at::Tag::needs_fixed_stride_order});
  // Each w_hh ([4C, C], float32 or bfloat16, CPU) packed for lstm_skip's CPU kernel in recurrent_dtype (as
  // lstm_skip's) and this process's CPU layout: one uint8 tensor, a segment per layer with a header (format,
  // tile width, shape, dtype, version) that lstm_skip checks. Its size depends on the shapes, dtype and
  // recurrent format only (jasco_fast/ops.py, lstm_pack_bytes).
  m.def("lstm_pack(Tensor[] w_hh, ScalarType? recurrent_dtype=None) -> Tensor");
  // Residual vector quantisation decode: out[b, :, t] = sum over k < K of codebooks[k, codes[b, k, t], :] for codes
  // [B, K, T] (int64/int32, K <= num_codebooks: the first K are used) and codebooks [num_codebooks,
  // codebook_size, D]; float32 accumulation in codebook order (float64 for float64), cast to `dtype`, written
  // as [B, D, T] contiguous or channels-last. Out-of-range codes raise an error.
  m.def("codes_to_latents(Tensor codes, Tensor codebooks, ScalarType? dtype=None, bool channels_last=False) -> Tensor",
        {at::Tag::needs_fixed_stride_order});

  // The SEANet decoder's tail, fused per time tile (CPU; float32 or bfloat16 activations, float32 arithmetic).
  // x: [B, C, 1, T]; act = ELU(alpha); convolutions keep the length, padded (pad_left, pad_right) in pad_mode
  // (constant/reflect/replicate/circular) after the activation. Outputs are channels-last [B, *, 1, T].
  // elu_resblock: x + conv(act(conv(act(x), w1, b1, dilation)), w2, b2), w1 [H, C, 1, k], w2 [C, H, 1, 1].
  m.def(
      "elu_resblock(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, int dilation, int pad_left, "
      "int pad_right, str pad_mode, float alpha) -> Tensor",
      {at::Tag::needs_fixed_stride_order});
  // elu_conv: conv(act(x), weight, bias, dilation), weight [Cout, C, 1, k].
  m.def(
      "elu_conv(Tensor x, Tensor weight, Tensor bias, int dilation, int pad_left, int pad_right, str pad_mode, "
      "float alpha) -> Tensor",
      {at::Tag::needs_fixed_stride_order});
  // elu_conv_transpose: conv_transpose(act(x), weight, bias, stride) with weight [C, Cout, 1, k] (no padding,
  // no output padding), then trim_left / trim_right samples dropped at the ends: [B, Cout, 1, (T - 1) * stride +
  // k - trim_left - trim_right].
  m.def(
      "elu_conv_transpose(Tensor x, Tensor weight, Tensor bias, int stride, int trim_left, int trim_right, "
      "float alpha) -> Tensor",
      {at::Tag::needs_fixed_stride_order});
}
