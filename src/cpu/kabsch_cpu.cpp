// CPU reference of the batched Kabsch alignment (the math lives in kabsch_cpu.h).
#include "cpu/kabsch_cpu.h"

namespace eqflow::cpu {

template <class T>
void kabsch(const T* x, const T* y, int64_t B, int n, int d, bool allow_reflection, T* rotation,
            T* cost, T* aligned) {
    for (int64_t b = 0; b < B; ++b) {
        const T* xb = x + b * n * d;                // [n][d] mobile
        const T* yb = y + b * n * d;                // [n][d] target
        double h[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // [d][d], H_ab = sum_i y_ia x_ib
        for (int i = 0; i < n; ++i)
            for (int a = 0; a < d; ++a)
                for (int c = 0; c < d; ++c)
                    h[a * d + c] +=
                        static_cast<double>(yb[i * d + a]) * static_cast<double>(xb[i * d + c]);
        double r[9];
        kabsch_math::best_orthogonal(h, d, allow_reflection, r);
        double sum = 0.0;
        for (int i = 0; i < n; ++i) {
            for (int a = 0; a < d; ++a) {
                double rx = 0.0;
                for (int c = 0; c < d; ++c) rx += r[a * d + c] * static_cast<double>(xb[i * d + c]);
                const double diff = static_cast<double>(yb[i * d + a]) - rx;
                sum += diff * diff;
                if (aligned) aligned[(b * n + i) * d + a] = static_cast<T>(rx);
            }
        }
        if (cost) cost[b] = static_cast<T>(sum);
        if (rotation)
            for (int k = 0; k < d * d; ++k) rotation[b * d * d + k] = static_cast<T>(r[k]);
    }
}

template void kabsch<float>(const float*, const float*, int64_t, int, int, bool, float*, float*,
                            float*);
template void kabsch<double>(const double*, const double*, int64_t, int, int, bool, double*,
                             double*, double*);

}  // namespace eqflow::cpu
