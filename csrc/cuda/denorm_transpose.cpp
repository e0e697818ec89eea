// CUDA binding of jasco_fast::denorm_transpose (setup.py compiles csrc/cuda/ only against a CUDA torch).
// Same checks and output allocation as the CPU kernel (../denorm_transpose.h); the kernels themselves
// are in denorm_transpose_kernel.cu. The input's strides are passed to the kernels as they are (no
// .contiguous() copy): the tiled transpose reads any strides, with vector loads when D is contiguous and
// aligned; channels_last uses vector loads/stores on contiguous aligned input and a strided loop otherwise.
#include "../denorm_transpose.h"
#include "binding.h"
#include "denorm_transpose_kernel.h"

namespace jasco_fast {
namespace {

Tensor denorm_transpose_cuda(Tensor latents, Tensor mean, Tensor std, std::optional<ScalarType> dtype,
                             bool channels_last) {
  const ScalarType out_dtype = check_inputs(latents, mean, std, dtype);
  JF_CHECK(latents.is_cuda(), "denorm_transpose: the CUDA kernel got latents on ", device_name(latents));
  // The tiled transpose's grid maps T along x (the channels-last pass is grid-strided: any size).
  JF_CHECK(channels_last || latents.size(1) <= cuda::kMaxTimeSteps, "denorm_transpose: T = ", latents.size(1),
           " time steps is more than the CUDA kernel's grid covers (", cuda::kMaxTimeSteps,
           "); decode the latents in shorter pieces along T");
  const DeviceGuard guard(latents.get_device_index());
  Tensor out = make_output(latents, out_dtype, channels_last);
  if (out.numel() == 0) return out;

  // The statistics in the compute type, 1 or D contiguous values (a tiny copy on the current stream).
  const bool wide = latents.scalar_type() == kDouble || out_dtype == kDouble;
  const ScalarType acc = wide ? kDouble : kFloat;
  const Tensor m = torch::stable::contiguous(torch::stable::to(mean, acc));
  const Tensor s = torch::stable::contiguous(torch::stable::to(std, acc));

  cuda::DenormTransposeArgs args{};
  args.in = latents.const_data_ptr();
  args.out = out.mutable_data_ptr();
  args.in_dtype = kernel_dtype(latents.scalar_type(), "denorm_transpose");
  args.out_dtype = kernel_dtype(out_dtype, "denorm_transpose");
  args.mean = m.const_data_ptr();
  args.std = s.const_data_ptr();
  args.mean_step = m.numel() == 1 ? 0 : 1;
  args.std_step = s.numel() == 1 ? 0 : 1;
  args.B = latents.size(0);
  args.T = latents.size(1);
  args.D = latents.size(2);
  args.sb = latents.stride(0);
  args.st = latents.stride(1);
  args.sd = latents.stride(2);
  args.channels_last = channels_last;

  // On the current stream (CUDA graphs, reduce-overhead); the launcher returns cudaGetLastError().
  JF_CUDA_CHECK(cuda::launch_denorm_transpose(args, current_stream(latents)));
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(jasco_fast, CUDA, m) { m.impl("denorm_transpose", TORCH_BOX(&denorm_transpose_cuda)); }

}  // namespace jasco_fast
