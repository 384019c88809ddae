// The field interface's names (eqflow/field.h); the backends live in src/cpu/ and kernels/.
#include "eqflow/field.h"

namespace eqflow {

const char* field_op_name(FieldOp op) {
    // In the order of the enum.
    static const char* const kNames[] = {"field forward",
                                         "field backward",
                                         "field divergence",
                                         "field jvp_trace",
                                         "field divergence_backward",
                                         "field forward_backward"};
    return kNames[static_cast<int>(op)];
}

}  // namespace eqflow
