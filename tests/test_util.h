// tests/test_util.h: shared helpers: the seed, random inputs and expect_all_close.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace eqflow::test {

// The seed of every random input; EQFLOW_TEST_SEED overrides it so a failure can be replayed.
inline uint64_t seed() {
    const char* env = std::getenv("EQFLOW_TEST_SEED");
    if (env && *env) return std::strtoull(env, nullptr, 10);
    return 20231128;
}

inline std::mt19937_64 rng(uint64_t salt = 0) {
    return std::mt19937_64(seed() * 1000003ull + salt);
}

inline std::vector<double> random_normal(size_t count, std::mt19937_64& gen, double scale = 1.0) {
    std::normal_distribution<double> dist(0.0, scale);
    std::vector<double> v(count);
    for (auto& x : v) x = dist(gen);
    return v;
}

// A configuration of n particles in d dimensions, no two closer than r_min: random sequential
// addition from a Gaussian cloud of width `scale` (widened if a particle finds no room).
inline std::vector<double> random_configuration(int n, int d, double scale, double r_min,
                                                std::mt19937_64& gen) {
    std::normal_distribution<double> dist(0.0, 1.0);
    std::vector<double> x(static_cast<size_t>(n * d));
    for (int i = 0; i < n; ++i) {
        for (int attempt = 0;; ++attempt) {
            if (attempt > 0 && attempt % 200 == 0) scale *= 1.1;
            for (int a = 0; a < d; ++a) x[i * d + a] = scale * dist(gen);
            bool ok = true;
            for (int j = 0; j < i && ok; ++j) {
                double r2 = 0;
                for (int a = 0; a < d; ++a)
                    r2 += (x[i * d + a] - x[j * d + a]) * (x[i * d + a] - x[j * d + a]);
                ok = r2 > r_min * r_min;
            }
            if (ok) break;
        }
    }
    return x;
}

// `count` such configurations, one after the other: x [count][n][d].
inline std::vector<double> random_configurations(int64_t count, int n, int d, double scale,
                                                 double r_min, std::mt19937_64& gen) {
    std::vector<double> x;
    for (int64_t k = 0; k < count; ++k) {
        const std::vector<double> xk = random_configuration(n, d, scale, r_min, gen);
        x.insert(x.end(), xk.begin(), xk.end());
    }
    return x;
}

// A random orthogonal d x d matrix (d = 2 or 3, row-major) by Gram-Schmidt on the rows of a
// Gaussian matrix, with determinant -1 when `reflection`, +1 otherwise.
inline std::vector<double> random_orthogonal(int d, bool reflection, std::mt19937_64& gen) {
    std::vector<double> R = random_normal(static_cast<size_t>(d * d), gen);
    for (int r = 0; r < d; ++r) {
        for (int s = 0; s < r; ++s) {
            double proj = 0.0;
            for (int k = 0; k < d; ++k) proj += R[r * d + k] * R[s * d + k];
            for (int k = 0; k < d; ++k) R[r * d + k] -= proj * R[s * d + k];
        }
        double norm = 0.0;
        for (int k = 0; k < d; ++k) norm += R[r * d + k] * R[r * d + k];
        for (int k = 0; k < d; ++k) R[r * d + k] /= std::sqrt(norm);
    }
    const double det = d == 2 ? R[0] * R[3] - R[1] * R[2]
                              : R[0] * (R[4] * R[8] - R[5] * R[7]) -
                                    R[1] * (R[3] * R[8] - R[5] * R[6]) +
                                    R[2] * (R[3] * R[7] - R[4] * R[6]);
    if ((det < 0) != reflection)
        for (int k = 0; k < d; ++k) R[k] = -R[k];
    return R;
}

// Every point of x [...][d] rotated: x R^T.
inline std::vector<double> rotate(const std::vector<double>& x, const std::vector<double>& R,
                                  int d) {
    std::vector<double> y(x.size(), 0.0);
    for (size_t i = 0; i < x.size() / d; ++i)
        for (int a = 0; a < d; ++a)
            for (int k = 0; k < d; ++k) y[i * d + a] += R[a * d + k] * x[i * d + k];
    return y;
}

// Two lists of records, equal in the fields given as member pointers, record by record.
template <class T, class... Fields>
void expect_same_records(const std::vector<T>& a, const std::vector<T>& b, Fields... fields) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) {
        auto expect_same = [&](auto field) {
            EXPECT_EQ(a[k].*field, b[k].*field) << "[" << k << "]";
        };
        (expect_same(fields), ...);
    }
}

// |actual - expected| <= atol + rtol * |expected| elementwise; NaN anywhere fails. On failure,
// reports the number of mismatches, the first few and the worst one.
template <class A, class E>
::testing::AssertionResult all_close(const std::vector<A>& actual, const std::vector<E>& expected,
                                     double atol, double rtol) {
    if (actual.size() != expected.size()) {
        return ::testing::AssertionFailure()
               << "size " << actual.size() << " vs expected " << expected.size();
    }
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    std::ostringstream first;
    for (size_t i = 0; i < actual.size(); ++i) {
        const double a = static_cast<double>(actual[i]);
        const double e = static_cast<double>(expected[i]);
        const double tol = atol + rtol * std::fabs(e);
        const double err = std::fabs(a - e);
        const bool ok = std::isfinite(a) && std::isfinite(e) && err <= tol;
        if (!ok) {
            if (bad < 5)
                first << "\n  [" << i << "] " << a << " vs " << e << " (err " << err << ", tol "
                      << tol << ")";
            ++bad;
        }
        const double excess = std::isfinite(err) ? err / (tol > 0 ? tol : 1e-300) : 1e300;
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << bad << " of " << actual.size() << " elements differ (atol " << atol << ", rtol "
           << rtol << ")" << first.str() << "\n  worst [" << worst << "] "
           << static_cast<double>(actual[worst]) << " vs " << static_cast<double>(expected[worst]);
}

#define EXPECT_ALL_CLOSE(actual, expected, atol, rtol) \
    EXPECT_TRUE(::eqflow::test::all_close((actual), (expected), (atol), (rtol)))

// A kernel that silently does nothing must fail: outputs must not be all zero.
template <class T>
bool not_all_zero(const std::vector<T>& v) {
    for (const T& x : v)
        if (x != T(0)) return true;
    return false;
}

inline std::string temp_path(const std::string& name) {
    const char* dir = std::getenv("TMPDIR");
    std::ostringstream oss;
    oss << (dir && *dir ? dir : "/tmp") << "/eqflow_test_" << ::getpid() << "_" << name;
    return oss.str();
}

}  // namespace eqflow::test
