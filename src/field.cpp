// The field interface's names (eqflow/field.h); the backends live in src/cpu/ and kernels/.
#include "eqflow/field.h"

namespace eqflow {

const char* field_op_name(FieldOp op) {
    switch (op) {
        case FieldOp::forward:
            return "field forward";
        case FieldOp::backward:
            return "field backward";
        case FieldOp::divergence:
            return "field divergence";
        case FieldOp::jvp_trace:
            return "field jvp_trace";
    }
    return "field operation";
}

}  // namespace eqflow
