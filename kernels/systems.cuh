// kernels/systems.cuh: batched DW4 / LJ energies and forces on the GPU.
#pragma once

#include <cstdint>

#include "eqflow/device.h"
#include "eqflow/systems.h"

namespace eqflow::cuda {

// x [B][n][d] (device) -> u [B] = E/kT, forces [B][n][d] = -dE/dx (nullable). T float or double.
template <class T>
void energy_forces(const System& s, const T* x, int64_t B, T* u, T* forces, Stream stream);

}  // namespace eqflow::cuda
