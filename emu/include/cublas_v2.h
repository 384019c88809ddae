// emu/include/cublas_v2.h: the emulation build has no cuBLAS. eqflow's library calls none of its
// routines (the fused kernels do their own products); the error-reporting code needs the status
// type, success and the status names, which are all this header provides. No routine runs, so
// no other status can arise.
#pragma once

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
};

const char* cublasGetStatusName(cublasStatus_t status);
const char* cublasGetStatusString(cublasStatus_t status);
