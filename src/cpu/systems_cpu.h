// src/cpu/systems_cpu.h: CPU reference of the particle-system energies. Plain loops, double.
#pragma once

#include <cstdint>

#include "eqflow/systems.h"

namespace eqflow::cpu {

// phi(r), phi'(r), phi''(r) of one pair term as it enters E (ordered pair for LJ).
void pair_terms(const System& s, double r, double* phi, double* dphi, double* d2phi);

// E(x) of one configuration x [n][d]; grad [n][d] = dE/dx and the full-space Laplacian on request.
double energy_one(const System& s, const double* x, double* grad, double* laplacian);

// Batched: x [B][n][d] -> u [B] = E/kT, forces [B][n][d] = -dE/dx (nullable). T is float or double.
template <class T>
void energy_forces(const System& s, const T* x, int64_t B, T* u, T* forces);

// The change of E when particle k of x [n][d] moves to `new_pos` [d] (x itself unchanged).
// O(n): used by the Metropolis sampler.
double energy_delta_move(const System& s, const double* x, int k, const double* new_pos);

}  // namespace eqflow::cpu
