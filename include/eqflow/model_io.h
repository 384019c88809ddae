// eqflow/model_io.h: safetensors files (docs/design.md section 8) -- a generic reader and writer,
// and model files of both field types (EGNN, kernel dynamics) on top of them.
//
// Format: 8-byte little-endian header length N, N bytes of JSON header, then the data section.
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets
// relative to the data section) and may hold "__metadata__", a map of strings to strings.
//
// Writing: tensors are stored in the given order, contiguous; the header is padded with spaces
// to a multiple of 8 bytes; the metadata gets two checksums (FNV-1a 64, 16 lower-case hex
// digits): "eqflow.tensor_checksum" over the tensors keyed by name (in name order: name, dtype,
// shape, bytes), so a file re-saved by another writer with the same tensors in another order
// still verifies, and "eqflow.meta_checksum" over the rest of the metadata; the file is written
// atomically (io.h).
//
// Reading is strict and never reads past the file: header length within the file (and at most
// 100 MB), valid JSON (eqflow/json.h), metadata values strings, dtypes F32/F64/F16/BF16/I64,
// shapes of
// non-negative integers, data_offsets inside the data section, consistent with dtype and shape,
// covering the data section exactly with neither holes nor overlaps, no duplicate names. When
// a checksum is present it must match (files of earlier versions carry the data-order
// "eqflow.checksum" instead, verified when the keyed one is absent); files from other safetensors
// writers (no checksum) load as well. Every problem is an Error naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "eqflow/egnn.h"
#include "eqflow/export.h"
#include "eqflow/flow_model.h"
#include "eqflow/kernel_dynamics.h"
#include "eqflow/tensor.h"

namespace eqflow {

// F16 (IEEE binary16) and BF16 (bfloat16) tensors are read and written like F32: their values
// live in `values` as double, rounded to nearest even on write.
enum class SafetensorsDtype { f32, f64, i64, f16, bf16 };

// "F32", "F64", "I64", "F16", "BF16"
EQFLOW_API const char* safetensors_dtype_name(SafetensorsDtype dtype);

// One named tensor. Floating tensors (F32, F64) keep their values as double in `values`; I64
// tensors keep theirs exactly in `ints` (store unsigned 64-bit state, e.g. RNG counters, by
// bit-casting to int64_t).
struct EQFLOW_API SafeTensor {
    std::string name;
    SafetensorsDtype dtype = SafetensorsDtype::f64;
    Shape shape;
    std::vector<double> values;  // f32 / f64: shape_numel(shape) values, C order
    std::vector<int64_t> ints;   // i64: shape_numel(shape) values, C order

    static SafeTensor f64(std::string name, Shape shape, std::vector<double> values);
    static SafeTensor f32(std::string name, Shape shape,
                          std::vector<double> values);  // rounded on write
    static SafeTensor i64(std::string name, Shape shape, std::vector<int64_t> ints);
};

struct EQFLOW_API SafetensorsFile {
    std::vector<SafeTensor> tensors;                            // in file order
    std::vector<std::pair<std::string, std::string>> metadata;  // "__metadata__", in file order

    const SafeTensor* find(const std::string& name) const;  // nullptr when absent
    const SafeTensor& at(const std::string& name) const;    // throws Error naming the tensor
    bool has_meta(const std::string& key) const;
    const std::string& meta(const std::string& key) const;     // throws Error naming the key
    void set_meta(const std::string& key, std::string value);  // replaces an existing key
};

// FNV-1a 64 of bytes (the checksum of the data section).
EQFLOW_API uint64_t fnv1a64(const void* data, size_t size);

// The file's bytes, and back. `what` names the source in error messages.
EQFLOW_API std::string serialize_safetensors(const SafetensorsFile& file);
EQFLOW_API SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& what);

EQFLOW_API void write_safetensors(const std::string& path, const SafetensorsFile& file);
EQFLOW_API SafetensorsFile read_safetensors(const std::string& path);

// ---------------------------------------------------------------------------------------------
// EGNN model files: one tensor per egnn_parameter_layout() entry, named and shaped as the
// PyTorch module's state_dict, F64 (default, exact), F32, F16 or BF16; the configuration in the
// metadata:
//   eqflow.system, eqflow.n_particles, eqflow.dim, eqflow.hidden, eqflow.layers,
//   eqflow.attention ("true"/"false"), eqflow.tanh, eqflow.coords_range (the effective value,
//   17 significant digits), eqflow.atom_types (comma-separated type per particle; only when
//   typed), plus eqflow.format = "egnn-v1", eqflow.version (the library's) and the checksums.
// Loading accepts "true"/"false"/"1"/"0" for the switches, any floating dtype, and checks every
// name, shape and dtype, naming the missing, misshapen or unexpected tensor.
// ---------------------------------------------------------------------------------------------
EQFLOW_API SafetensorsFile
egnn_model_to_safetensors(const EgnnModel& model, SafetensorsDtype dtype = SafetensorsDtype::f64);
EQFLOW_API EgnnModel egnn_model_from_safetensors(const SafetensorsFile& file,
                                                 const std::string& what);

// Reading a kernel-dynamics file here is an Error that says so (use the FlowModel functions).
EQFLOW_API void save_model(const std::string& path, const EgnnModel& model,
                           SafetensorsDtype dtype = SafetensorsDtype::f64);
EQFLOW_API EgnnModel load_model(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Kernel-dynamics model files (eqflow/kernel_dynamics.h): the tensors of
// kernel_parameter_layout() ("time_map.weight" [K, M], "time_map.bias" [K]), F64 by default,
// and the configuration in the metadata: eqflow.format = "kernel-dynamics-v1", eqflow.system,
// eqflow.n_particles, eqflow.dim, eqflow.kernel.radial_centres, eqflow.kernel.radial_widths,
// eqflow.kernel.time_centres (comma-separated, 17 significant digits, at most 4096 each),
// eqflow.kernel.time_width, eqflow.length_scale, plus eqflow.version and the checksums.
// ---------------------------------------------------------------------------------------------
EQFLOW_API SafetensorsFile kernel_model_to_safetensors(
    const KernelModel& model, SafetensorsDtype dtype = SafetensorsDtype::f64);
EQFLOW_API KernelModel kernel_model_from_safetensors(const SafetensorsFile& file,
                                                     const std::string& what);

// ---------------------------------------------------------------------------------------------
// Model files of either field type (eqflow/flow_model.h): the reader dispatches on
// eqflow.format ("egnn-v1", "kernel-dynamics-v1"; absent: EGNN); an unknown format is an Error.
// ---------------------------------------------------------------------------------------------
EQFLOW_API SafetensorsFile
flow_model_to_safetensors(const FlowModel& model, SafetensorsDtype dtype = SafetensorsDtype::f64);
EQFLOW_API FlowModel flow_model_from_safetensors(const SafetensorsFile& file,
                                                 const std::string& what);
EQFLOW_API void save_model(const std::string& path, const FlowModel& model,
                           SafetensorsDtype dtype = SafetensorsDtype::f64);
EQFLOW_API FlowModel load_flow_model(const std::string& path);

// ---------------------------------------------------------------------------------------------
// Training checkpoints: a model file (the raw, optimised weights) plus the optimiser state,
// written and read only here. Tensors beyond the model's: trainer.state (I64 [4]: step, Adam
// step, skipped steps, elapsed milliseconds), optimizer.adam.m and optimizer.adam.v (F64 [P]),
// optimizer.ema (F64 [P], with EMA only). Metadata: the model's, eqflow.train.step and
// eqflow.train.total_steps, and the caller's fingerprint: the options a resumed run must share.
// ---------------------------------------------------------------------------------------------
struct TrainingCheckpoint {
    FlowModel model;  // the optimised weights (not the EMA), of either field type
    int64_t step = 0, total_steps = 0, adam_step = 0, skipped = 0;
    double elapsed_seconds = 0.0;
    std::vector<double> adam_m, adam_v;  // [P]; empty: zeros
    std::vector<double> ema;             // [P] or empty (no EMA)
    std::vector<std::pair<std::string, std::string>> fingerprint;
};

EQFLOW_API void save_checkpoint(const std::string& path, const TrainingCheckpoint& checkpoint);
// Reads a checkpoint and checks it against the caller's fingerprint (every key present with the
// same value, naming the first that differs), the sizes of the moments and the EMA
// (`with_ema`), and the counters (non-negative).
EQFLOW_API TrainingCheckpoint
load_checkpoint(const std::string& path,
                const std::vector<std::pair<std::string, std::string>>& fingerprint, bool with_ema);

}  // namespace eqflow
