// kernels/molecule.cuh: the batched molecular force field (eqflow/force_field.h) on the GPU.
#pragma once

#include <cstdint>

#include "eqflow/device.h"
#include "eqflow/force_field.h"

namespace eqflow::cuda {

// x [B][n][3] (device, nm) -> energy [B] = energy_scale * E (E in kJ/mol), forces [B][n][3] =
// -dE/dx (nullable). T float or double. The force field's parameters are copied to the device once
// per ForceField object (and again when its contents change).
template <class T>
void molecule_energy_forces(const ForceField& ff, const T* x, int64_t B, T* energy, T* forces,
                            unsigned terms, Stream stream, double energy_scale = 1.0);

}  // namespace eqflow::cuda
