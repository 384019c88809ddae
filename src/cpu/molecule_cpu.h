// src/cpu/molecule_cpu.h: CPU reference of the molecular force field. Plain loops, double.
#pragma once

#include <cstdint>

#include "eqflow/force_field.h"

namespace eqflow::cpu {

// E (kJ/mol) of the selected terms of one configuration x [n][3]; grad [n][3] = dE/dx (nullable).
double molecule_energy_one(const ForceField& ff, const double* x, double* grad, unsigned terms);

// OBC Born radii [n] of x [n][3]; psi [n] (nullable) receives the scaled descreening integral Psi_i
// and chain [n] (nullable) dB_i/dPsi_i.
void obc_born_radii(const ForceField& ff, const double* x, double* born, double* psi,
                    double* chain);

// Batched: x [B][n][3] -> energy [B] = energy_scale * E (1: kJ/mol; 1/kT: reduced), forces
// [B][n][3] = -dE/dx in kJ/mol/nm (nullable).
template <class T>
void molecule_energy_forces(const ForceField& ff, const T* x, int64_t B, T* energy, T* forces,
                            unsigned terms, double energy_scale = 1.0);

}  // namespace eqflow::cpu
