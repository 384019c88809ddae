// kernels/device_compat.cuh: the few spellings that differ between the CUDA build of a kernel
// and the CPU emulation of the same source in the tests (emu/cuda_emu.h, which defines
// EQFLOW_CUDA_EMULATION before including a kernel header).
#pragma once

#if defined(EQFLOW_CUDA_EMULATION)
// The launch's dynamic shared memory, 16-byte aligned.
#define EQFLOW_DYNAMIC_SHARED(type, name) \
    type* const name = static_cast<type*>(::emu::dynamic_smem())
#else
#define EQFLOW_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// kernel<<<grid, block, smem, stream>>>(args...) is written
// EQFLOW_LAUNCH(kernel, grid, block, smem, stream, args...). A template kernel whose arguments
// contain a comma goes in parentheses: EQFLOW_LAUNCH((k<T, D>), ...). The emulator runs the
// launch at once; the stream is only a name there.
#if defined(EQFLOW_CUDA_EMULATION)
#define EQFLOW_LAUNCH(kernel, grid, block, smem, stream, ...) \
    (static_cast<void>(stream), ::emu::make_launcher(kernel, (grid), (block), (smem)))(__VA_ARGS__)
#else
#define EQFLOW_LAUNCH(kernel, grid, block, smem, stream, ...) \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif
