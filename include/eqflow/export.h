// eqflow/export.h: symbol visibility. The library is built with hidden visibility; only
// declarations marked EQFLOW_API are exported from the shared object.
#pragma once

#if defined(_WIN32)
#if defined(EQFLOW_BUILDING_LIBRARY)
#define EQFLOW_API __declspec(dllexport)
#else
#define EQFLOW_API __declspec(dllimport)
#endif
#else
#define EQFLOW_API __attribute__((visibility("default")))
#endif

// Functions usable from both host code and CUDA kernels (Philox, small math helpers). Plain
// C++ compilers see nothing.
#if defined(__CUDACC__)
#define EQFLOW_HD __host__ __device__
#else
#define EQFLOW_HD
#endif
