// src/common/dihedral.h: the dihedral angle of four atoms, shared by the CPU analysis and force
// field (src/molecule_analysis.cpp, src/cpu/molecule_cpu.cpp) and the CUDA force field
// (kernels/molecule.cu). EQFLOW_HD; T = float or double.
#pragma once

#include <math.h>

#include "eqflow/export.h"

namespace eqflow::geometry {

// The angle in (-pi, pi] between the planes (i, j, k) and (j, k, l) of x [n][3], IUPAC sign
// convention: b0 = x_i - x_j, b1 = x_k - x_j (unit), b2 = x_l - x_k; v, w are b0 and b2 without
// their b1 part; the angle is atan2((b1 x v) . w, v . w).
template <class T>
EQFLOW_HD inline T dihedral(const T* x, int i, int j, int k, int l) {
    T b0[3], b1[3], b2[3];
    for (int a = 0; a < 3; ++a) {
        b0[a] = x[3 * i + a] - x[3 * j + a];
        b1[a] = x[3 * k + a] - x[3 * j + a];
        b2[a] = x[3 * l + a] - x[3 * k + a];
    }
    const T nb1 = sqrt(b1[0] * b1[0] + b1[1] * b1[1] + b1[2] * b1[2]);
    for (int a = 0; a < 3; ++a) b1[a] /= nb1;
    const T p0 = b0[0] * b1[0] + b0[1] * b1[1] + b0[2] * b1[2];
    const T p2 = b2[0] * b1[0] + b2[1] * b1[1] + b2[2] * b1[2];
    T v[3], w[3];
    for (int a = 0; a < 3; ++a) {
        v[a] = b0[a] - p0 * b1[a];
        w[a] = b2[a] - p2 * b1[a];
    }
    const T c0 = b1[1] * v[2] - b1[2] * v[1], c1 = b1[2] * v[0] - b1[0] * v[2],
            c2 = b1[0] * v[1] - b1[1] * v[0];
    return atan2(c0 * w[0] + c1 * w[1] + c2 * w[2], v[0] * w[0] + v[1] * w[1] + v[2] * w[2]);
}

}  // namespace eqflow::geometry
