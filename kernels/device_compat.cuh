// kernels/device_compat.cuh: the few spellings that differ between the CUDA build of a kernel
// and the CPU emulation of the same source in the tests (emu/cuda_emu.h, which defines
// EQFLOW_CUDA_EMULATION before including a kernel header).
#pragma once

#include <cstdint>

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
// launch at once, or records it when the stream is capturing a graph.
#if defined(EQFLOW_CUDA_EMULATION)
#define EQFLOW_LAUNCH(kernel, grid, block, smem, stream, ...) \
    ::emu::make_launcher(kernel, (grid), (block), (smem),     \
                         static_cast<const void*>(stream))(__VA_ARGS__)
#else
#define EQFLOW_LAUNCH(kernel, grid, block, smem, stream, ...) \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

// 128-bit shared-memory access of four consecutive floats at a 16-byte aligned address: one
// LDS.128 / STS.128 on the device. The emulation copies the words and checks the alignment, which
// the device needs (a misaligned vector access faults there).
namespace eqflow::cuda {
#if defined(EQFLOW_CUDA_EMULATION)
inline void check_align16(const float* p) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
        throw ::emu::Error("misaligned 16-byte vector access to shared memory");
}
inline void ld4(const float* p, float (&out)[4]) {
    check_align16(p);
    for (int u = 0; u < 4; ++u) out[u] = p[u];
}
inline void st4(float* p, const float (&in)[4]) {
    check_align16(p);
    for (int u = 0; u < 4; ++u) p[u] = in[u];
}
#else
__device__ __forceinline__ void ld4(const float* p, float (&out)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}
__device__ __forceinline__ void st4(float* p, const float (&in)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
}
#endif
}  // namespace eqflow::cuda
