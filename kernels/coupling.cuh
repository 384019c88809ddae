// kernels/coupling.cuh: the fm / ot / eqot couplings on the GPU (see eqflow/coupling.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "eqflow/coupling.h"
#include "eqflow/device.h"

namespace eqflow::cuda {

std::size_t coupling_workspace_bytes(const CouplingOptions& o, int64_t B, int64_t n, int64_t d);

// x0, x1 [B][n][d] (device) -> x1_paired [B][n][d], pairing [B] (nullable), cost [B] (nullable).
template <class T>
void couple(const CouplingOptions& o, const T* x0, const T* x1, int64_t B, int n, int d,
            T* x1_paired, int64_t* pairing, double* cost, void* workspace,
            std::size_t workspace_bytes, Stream stream);

}  // namespace eqflow::cuda
