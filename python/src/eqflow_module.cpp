// python/src/eqflow_module.cpp: the extension module eqflow._eqflow (nanobind) over the public C++
// API. The Python layer (python/eqflow/*.py) allocates outputs of the caller's kind (NumPy or
// torch, CPU or CUDA) and passes them here with the inputs; this file checks every array (shape,
// dtype, device, contiguity, finite values) and calls the library on them in place: zero-copy
// whenever the array already has the backend's precision (float64 on the CPU reference, float32
// on CUDA), one converted copy otherwise (float32 on the CPU).
//
// Errors: eqflow::Error becomes eqflow.Error (a ValueError) carrying the library's message; the
// checks here throw eqflow::Error too, in the library's words. Nothing here may abort.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "eqflow/assignment.h"
#include "eqflow/buffer.h"
#include "eqflow/coupling.h"
#include "eqflow/device.h"
#include "eqflow/egnn.h"
#include "eqflow/error.h"
#include "eqflow/field.h"
#include "eqflow/figures.h"
#include "eqflow/flow.h"
#include "eqflow/json.h"
#include "eqflow/mcmc.h"
#include "eqflow/metrics.h"
#include "eqflow/model_io.h"
#include "eqflow/ode.h"
#include "eqflow/prior.h"
#include "eqflow/systems.h"
#include "eqflow/trainer.h"

#ifndef EQFLOW_VERSION_STRING
#define EQFLOW_VERSION_STRING "unknown"
#endif

namespace nb = nanobind;

namespace eqflow::python {
namespace {

using InArray = nb::ndarray<nb::ro>;  // any framework, dtype and device; checked below
using OutArray = nb::ndarray<>;
using Opt = std::optional<OutArray>;

enum class DType { f32, f64, i64, i32, other };

DType dtype_of(const nb::dlpack::dtype& t) {
    if (t == nb::dtype<float>()) return DType::f32;
    if (t == nb::dtype<double>()) return DType::f64;
    if (t == nb::dtype<int64_t>()) return DType::i64;
    if (t == nb::dtype<int32_t>()) return DType::i32;
    return DType::other;
}

std::string dtype_name(const nb::dlpack::dtype& t) {
    const char* kind = t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float)    ? "float"
                       : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int)    ? "int"
                       : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::UInt)   ? "uint"
                       : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bool)   ? "bool"
                       : t.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) ? "bfloat"
                                                                                        : "complex";
    return kind + std::to_string(t.bits);
}

// What the checks found out about one array.
struct ArrayRef {
    void* data = nullptr;
    Shape shape;
    Device device = Device::cpu;
    DType dtype = DType::other;
    std::string dtype_text;
    int64_t numel() const { return shape_numel(shape); }
};

template <class A>
ArrayRef inspect(const A& a, const char* name) {
    ArrayRef r;
    r.data = const_cast<void*>(static_cast<const void*>(a.data()));
    for (size_t i = 0; i < a.ndim(); ++i) r.shape.push_back(static_cast<int64_t>(a.shape(i)));
    r.dtype = dtype_of(a.dtype());
    r.dtype_text = dtype_name(a.dtype());
    if (a.device_type() == nb::device::cpu::value) {
        r.device = Device::cpu;
    } else if (a.device_type() == nb::device::cuda::value) {
        EQFLOW_CHECK(cuda_compiled(), name << " is in CUDA memory, but this eqflow was built "
                                              "without CUDA (reinstall with nvcc present)");
        EQFLOW_CHECK(a.device_id() == 0, name << " is on CUDA device " << a.device_id()
                                              << "; eqflow computes on device 0");
        r.device = Device::cuda;
    } else {
        EQFLOW_THROW(name << " is in memory eqflow cannot use (DLPack device type "
                          << a.device_type() << "); pass a CPU or CUDA array");
    }
    // C order, dense: strides (in elements) are the suffix products; extents of 1 may have
    // any stride, and an empty array has no layout to check.
    if (r.numel() == 0) return r;
    int64_t expected = 1;
    for (size_t i = a.ndim(); i-- > 0;) {
        const int64_t extent = static_cast<int64_t>(a.shape(i));
        if (extent != 1 && a.stride(i) != expected) {
            std::ostringstream strides;
            for (size_t k = 0; k < a.ndim(); ++k) strides << (k ? ", " : "") << a.stride(k);
            EQFLOW_THROW(name << " with shape " << shape_string(r.shape)
                              << " is not C-contiguous (strides [" << strides.str()
                              << "] elements); pass numpy.ascontiguousarray(a) or "
                                 "tensor.contiguous()");
        }
        expected *= extent;
    }
    return r;
}

void require_dtype(const ArrayRef& a, std::initializer_list<DType> allowed, const char* name,
                   const char* what) {
    for (DType d : allowed)
        if (a.dtype == d) return;
    EQFLOW_THROW(name << " has dtype " << a.dtype_text << "; " << what);
}

void require_device(const ArrayRef& a, Device device, const char* name) {
    EQFLOW_CHECK(a.device == device, name << " is in " << device_name(a.device) << " memory, "
                                          << "the other arrays in " << device_name(device));
}

void require_shape(const ArrayRef& a, const Shape& shape, const char* name) {
    EQFLOW_CHECK(a.shape == shape, name << " has shape " << shape_string(a.shape) << ", expected "
                                        << shape_string(shape));
}

// Host arrays only: names the first NaN or infinity.
void require_finite(const ArrayRef& a, const char* name) {
    if (a.device != Device::cpu) return;
    const int64_t N = a.numel();
    auto report = [&](int64_t i, double value) {
        Shape index(a.shape.size());
        int64_t rest = i;
        for (size_t k = a.shape.size(); k-- > 0;) {
            index[k] = a.shape[k] > 0 ? rest % a.shape[k] : 0;
            rest = a.shape[k] > 0 ? rest / a.shape[k] : 0;
        }
        EQFLOW_THROW(name << " holds " << value << " at " << shape_string(index)
                          << "; the values must be finite");
    };
    if (a.dtype == DType::f64) {
        const double* p = static_cast<const double*>(a.data);
        for (int64_t i = 0; i < N; ++i)
            if (!std::isfinite(p[i])) report(i, p[i]);
    } else if (a.dtype == DType::f32) {
        const float* p = static_cast<const float*>(a.data);
        for (int64_t i = 0; i < N; ++i)
            if (!std::isfinite(p[i])) report(i, p[i]);
    }
}

// A host array read as double: the array itself when it is float64, else a converted copy.
struct HostDoubles {
    const double* ptr = nullptr;
    std::vector<double> copy;
    explicit HostDoubles(const ArrayRef& a) {
        if (a.dtype == DType::f64) {
            ptr = static_cast<const double*>(a.data);
            return;
        }
        const float* p = static_cast<const float*>(a.data);
        copy.assign(p, p + a.numel());
        ptr = copy.data();
    }
};

// A host output in double: the array itself when it is float64, else a buffer written back
// (rounded) by commit().
struct HostOut {
    ArrayRef ref;
    double* ptr = nullptr;
    std::vector<double> buffer;
    explicit HostOut(const ArrayRef& a, bool load = false) : ref(a) {
        if (a.dtype == DType::f64) {
            ptr = static_cast<double*>(a.data);
            return;
        }
        buffer.assign(static_cast<size_t>(a.numel()), 0.0);
        if (load) {
            const float* p = static_cast<const float*>(a.data);
            for (size_t i = 0; i < buffer.size(); ++i) buffer[i] = p[i];
        }
        ptr = buffer.data();
    }
    void commit() {
        if (ref.dtype == DType::f64) return;
        float* p = static_cast<float*>(ref.data);
        for (size_t i = 0; i < buffer.size(); ++i) p[i] = static_cast<float>(buffer[i]);
    }
};

template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> values, const Shape& shape) {
    auto* owned = new std::vector<T>(std::move(values));
    nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    std::vector<size_t> dims(shape.begin(), shape.end());
    return nb::ndarray<nb::numpy, T>(owned->data(), dims.size(), dims.data(), owner);
}

template <class T>
TensorView<T> view_of(const ArrayRef& a, Shape shape) {
    return TensorView<T>(static_cast<T*>(a.data), std::move(shape), a.device);
}

// ---------------------------------------------------------------------------------------------
// A model of either field type (EGNN or kernel dynamics) and its fields: the CPU reference
// (double) and CUDA (float32, the EGNN only), made on first use. A call may bring its own
// parameters (eqflow.torch.Field owns them as a torch Parameter); the next call without them
// puts the model's back.
// ---------------------------------------------------------------------------------------------
class Model {
  public:
    explicit Model(FlowModel model) : model_(std::move(model)) {}

    const FlowModel& model() const { return model_; }
    int n() const { return model_.n_particles(); }
    int d() const { return model_.dim(); }
    int64_t parameter_count() const { return static_cast<int64_t>(model_.params.size()); }

    void set_parameters(std::vector<double> params) {
        std::lock_guard<std::mutex> lock(mutex_);
        EQFLOW_CHECK(
            static_cast<int64_t>(params.size()) == parameter_count(),
            "parameters: " << params.size() << " values, the model has " << parameter_count());
        for (size_t i = 0; i < params.size(); ++i)
            EQFLOW_CHECK(std::isfinite(params[i]),
                         "parameters: value " << i << " is " << params[i]);
        model_.params = std::move(params);
        if (cpu_) cpu_->set_parameters(model_.params);
        if (cuda_) cuda_->set_parameters(model_.params);
        cpu_foreign_ = cuda_foreign_ = false;
    }

    // x [B, n, d] or [B, n*d]; t [B]; v like x (optional when div is given); div [B].
    void field(const InArray& x_in, const InArray& t_in, const Opt& v_out, const Opt& div_out,
               const std::optional<InArray>& params_in, uintptr_t stream) {
        const char* what = div_out ? "divergence" : "field";
        const ArrayRef x = inspect(x_in, "x"), t = inspect(t_in, "t");
        const int64_t B = batch_of(x, what);
        require_device(t, x.device, "t");
        require_shape(t, Shape{B}, "t");
        std::optional<ArrayRef> v, div, params;
        if (v_out) v = inspect(*v_out, "v");
        if (div_out) div = inspect(*div_out, "div");
        if (params_in) params = inspect(*params_in, "parameters");
        EQFLOW_CHECK(v || div, "field: nothing to compute");
        if (v) {
            require_device(*v, x.device, "v");
            require_shape(*v, x.shape, "v");
        }
        if (div) {
            require_device(*div, x.device, "div");
            require_shape(*div, Shape{B}, "div");
        }
        check_params(params, x.device);
        const Shape shape3{B, n(), d()};

        if (x.device == Device::cpu) {
            for (const ArrayRef* a : {&x, &t}) require_cpu_float(*a);
            if (v) require_cpu_float(*v);
            if (div) require_cpu_float(*div);
            require_finite(x, "x");
            require_finite(t, "t");
            std::optional<HostDoubles> p;
            if (params) {
                require_finite(*params, "parameters");
                p.emplace(*params);
            }
            const HostDoubles xd(x), td(t);
            std::optional<HostOut> vd, dd;
            if (v) vd.emplace(*v);
            if (div) dd.emplace(*div);
            {
                nb::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(mutex_);
                Field<double>& f = cpu_field(p ? p->ptr : nullptr, Device::cpu);
                TensorView<const double> xv(xd.ptr, shape3), tv(td.ptr, Shape{B});
                TensorView<double> vv =
                    vd ? TensorView<double>(vd->ptr, shape3) : TensorView<double>();
                if (dd) {
                    TensorView<double> dv(dd->ptr, Shape{B});
                    f.divergence(xv, tv, vv, dv, cpu_ws_.get(f, FieldOp::divergence, B));
                } else {
                    f.forward(xv, tv, vv, cpu_ws_.get(f, FieldOp::forward, B));
                }
            }
            if (vd) vd->commit();
            if (dd) dd->commit();
            return;
        }
        for (const ArrayRef* a : {&x, &t}) require_cuda_float(*a);
        if (v) require_cuda_float(*v);
        if (div) require_cuda_float(*div);
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        Stream s = reinterpret_cast<Stream>(stream);
        Field<float>& f = cuda_field(params ? params->data : nullptr, s);
        TensorView<const float> xv(static_cast<const float*>(x.data), shape3, Device::cuda);
        TensorView<const float> tv(static_cast<const float*>(t.data), Shape{B}, Device::cuda);
        TensorView<float> vv =
            v ? view_of<float>(*v, shape3) : TensorView<float>(nullptr, Shape{}, Device::cuda);
        if (div) {
            f.divergence(xv, tv, vv, view_of<float>(*div, Shape{B}),
                         cuda_ws_.get(f, FieldOp::divergence, B), s);
        } else {
            f.forward(xv, tv, vv, cuda_ws_.get(f, FieldOp::forward, B), s);
        }
    }

    // Reverse mode: dL_dparams += dL/dparams, dL_dx = dL/dx (optional).
    void backward(const InArray& x_in, const InArray& t_in, const InArray& g_in,
                  const OutArray& dparams_out, const Opt& dx_out,
                  const std::optional<InArray>& params_in, uintptr_t stream) {
        const ArrayRef x = inspect(x_in, "x"), t = inspect(t_in, "t"), g = inspect(g_in, "dL_dv"),
                       dp = inspect(dparams_out, "dL_dparams");
        const int64_t B = batch_of(x, "backward");
        require_device(t, x.device, "t");
        require_shape(t, Shape{B}, "t");
        require_device(g, x.device, "dL_dv");
        require_shape(g, x.shape, "dL_dv");
        require_device(dp, x.device, "dL_dparams");
        require_shape(dp, Shape{parameter_count()}, "dL_dparams");
        std::optional<ArrayRef> dx, params;
        if (dx_out) dx = inspect(*dx_out, "dL_dx");
        if (params_in) params = inspect(*params_in, "parameters");
        if (dx) {
            require_device(*dx, x.device, "dL_dx");
            require_shape(*dx, x.shape, "dL_dx");
        }
        check_params(params, x.device);
        const Shape shape3{B, n(), d()};

        if (x.device == Device::cpu) {
            for (const ArrayRef* a : {&x, &t, &g, &dp}) require_cpu_float(*a);
            if (dx) require_cpu_float(*dx);
            require_finite(x, "x");
            require_finite(t, "t");
            require_finite(g, "dL_dv");
            std::optional<HostDoubles> p;
            if (params) {
                require_finite(*params, "parameters");
                p.emplace(*params);
            }
            const HostDoubles xd(x), td(t), gd(g);
            HostOut dpd(dp, /*load=*/true);
            std::optional<HostOut> dxd;
            if (dx) dxd.emplace(*dx);
            {
                nb::gil_scoped_release release;
                std::lock_guard<std::mutex> lock(mutex_);
                Field<double>& f = cpu_field(p ? p->ptr : nullptr, Device::cpu);
                f.backward(TensorView<const double>(xd.ptr, shape3),
                           TensorView<const double>(td.ptr, Shape{B}),
                           TensorView<const double>(gd.ptr, shape3),
                           TensorView<double>(dpd.ptr, Shape{parameter_count()}),
                           dxd ? TensorView<double>(dxd->ptr, shape3) : TensorView<double>(),
                           cpu_ws_.get(f, FieldOp::backward, B));
            }
            dpd.commit();
            if (dxd) dxd->commit();
            return;
        }
        for (const ArrayRef* a : {&x, &t, &g, &dp}) require_cuda_float(*a);
        if (dx) require_cuda_float(*dx);
        nb::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        Stream s = reinterpret_cast<Stream>(stream);
        Field<float>& f = cuda_field(params ? params->data : nullptr, s);
        f.backward(
            TensorView<const float>(static_cast<const float*>(x.data), shape3, Device::cuda),
            TensorView<const float>(static_cast<const float*>(t.data), Shape{B}, Device::cuda),
            TensorView<const float>(static_cast<const float*>(g.data), shape3, Device::cuda),
            view_of<float>(dp, Shape{parameter_count()}),
            dx ? view_of<float>(*dx, shape3) : TensorView<float>(),
            cuda_ws_.get(f, FieldOp::backward, B), s);
    }

  private:
    int64_t batch_of(const ArrayRef& x, const char* what) const {
        const int64_t nd = static_cast<int64_t>(n()) * d();
        const bool ok = (x.shape.size() == 3 && x.shape[1] == n() && x.shape[2] == d()) ||
                        (x.shape.size() == 2 && x.shape[1] == nd);
        EQFLOW_CHECK(ok, what << ": x has shape " << shape_string(x.shape) << ", expected [B, "
                              << n() << ", " << d() << "] or [B, " << nd << "] (the model has "
                              << n() << " particles in " << d() << " dimensions)");
        return x.shape[0];
    }
    void check_params(const std::optional<ArrayRef>& params, Device device) const {
        if (!params) return;
        require_device(*params, device, "parameters");
        require_shape(*params, Shape{parameter_count()}, "parameters");
    }
    static void require_cpu_float(const ArrayRef& a) {
        require_dtype(a, {DType::f64, DType::f32}, "the array",
                      "CPU arrays must be float64 or float32");
    }
    static void require_cuda_float(const ArrayRef& a) {
        require_dtype(a, {DType::f32}, "the array",
                      "CUDA arrays must be float32 (the CUDA field computes in float32)");
    }

    // The CPU field with `params` (host doubles) or, when null, the model's own.
    Field<double>& cpu_field(const double* params, Device) {
        if (!cpu_) cpu_ = make_reference_field(model_, 0);
        if (params) {
            TensorView<double> dst = cpu_->parameters();
            std::memcpy(dst.data, params, sizeof(double) * static_cast<size_t>(dst.numel()));
            cpu_foreign_ = true;
        } else if (cpu_foreign_) {
            cpu_->set_parameters(model_.params);
            cpu_foreign_ = false;
        }
        return *cpu_;
    }
    Field<float>& cuda_field(const void* params, Stream stream) {
        if (!cuda_) cuda_ = make_cuda_field(model_);
        if (params) {
            TensorView<float> dst = cuda_->parameters();
            detail::copy_bytes(dst.data, Device::cuda, params, Device::cuda,
                               sizeof(float) * static_cast<size_t>(dst.numel()), stream);
            cuda_foreign_ = true;
        } else if (cuda_foreign_) {
            cuda_->set_parameters(model_.params);
            cuda_foreign_ = false;
        }
        return *cuda_;
    }

    FlowModel model_;
    std::mutex mutex_;
    std::unique_ptr<Field<double>> cpu_;
    std::unique_ptr<Field<float>> cuda_;
    FieldWorkspace cpu_ws_, cuda_ws_;
    bool cpu_foreign_ = false, cuda_foreign_ = false;
};

// The configuration of the model's own field type; "field_type" says which.
nb::dict config_dict(const FlowModel& m) {
    nb::dict d;
    d["field_type"] = field_kind_name(m.kind);
    if (m.kind == FieldKind::kernel) {
        const KernelConfig& c = m.kernel_config;
        d["system"] = c.system;
        d["n_particles"] = c.n_particles;
        d["dim"] = c.dim;
        d["radial_centres"] = c.radial_centres;
        d["radial_widths"] = c.radial_widths;
        d["time_centres"] = c.time_centres;
        d["time_width"] = c.time_width;
        d["length_scale"] = c.length_scale;
        return d;
    }
    const EgnnConfig& c = m.egnn_config;
    d["system"] = c.system;
    d["n_particles"] = c.n_particles;
    d["dim"] = c.dim;
    d["hidden"] = c.hidden;
    d["layers"] = c.layers;
    d["attention"] = c.attention;
    d["tanh"] = c.tanh;
    d["coords_range"] = c.effective_coords_range();
    d["atom_types"] = c.atom_types;
    d["length_scale"] = c.length_scale;
    return d;
}

std::vector<double> host_vector(const InArray& a_in, const char* name) {
    const ArrayRef a = inspect(a_in, name);
    EQFLOW_CHECK(a.device == Device::cpu, name << " must be in CPU memory");
    require_dtype(a, {DType::f64, DType::f32}, name, "expected float64 or float32");
    require_finite(a, name);
    const HostDoubles h(a);
    return std::vector<double>(h.ptr, h.ptr + a.numel());
}

SafetensorsDtype parse_file_dtype(const std::string& s) {
    if (s == "f64" || s == "float64" || s == "F64") return SafetensorsDtype::f64;
    if (s == "f32" || s == "float32" || s == "F32") return SafetensorsDtype::f32;
    if (s == "f16" || s == "float16" || s == "F16") return SafetensorsDtype::f16;
    if (s == "bf16" || s == "bfloat16" || s == "BF16") return SafetensorsDtype::bf16;
    EQFLOW_THROW("model file dtype '" << s << "': expected f64, f32, f16 or bf16");
}

// [N, n, d] or [N, n*d] configurations of a system on the host, as doubles.
std::vector<double> host_configurations(const InArray& a_in, int n, int d, const char* name,
                                        int64_t* count) {
    const ArrayRef a = inspect(a_in, name);
    EQFLOW_CHECK(a.device == Device::cpu, name << " must be in CPU memory");
    require_dtype(a, {DType::f64, DType::f32}, name, "expected float64 or float32");
    const int64_t nd = static_cast<int64_t>(n) * d;
    const bool ok = (a.shape.size() == 3 && a.shape[1] == n && a.shape[2] == d) ||
                    (a.shape.size() == 2 && a.shape[1] == nd);
    EQFLOW_CHECK(ok, name << " has shape " << shape_string(a.shape) << ", expected [N, " << n
                          << ", " << d << "] or [N, " << nd << "]");
    require_finite(a, name);
    *count = a.shape[0];
    const HostDoubles h(a);
    return std::vector<double>(h.ptr, h.ptr + a.numel());
}

// device as the commands resolve --device (src/cli/flow_cli.cpp): cpu, cuda or auto (the GPU
// when one is usable), for either field type.
Device resolve_device(const std::string& device) {
    return parse_device(device);
}

FlowOptions flow_options(const std::string& solver, double atol, double rtol, int steps,
                         int64_t batch, int hutchinson, int threads, const std::string& device) {
    FlowOptions o;
    o.ode.method = parse_ode_method(solver);
    o.ode.atol = atol;
    o.ode.rtol = rtol;
    o.ode.steps = steps;
    o.batch = batch;
    o.hutchinson = hutchinson > 0;
    o.hutchinson_probes = hutchinson > 0 ? hutchinson : 1;
    o.threads = threads;
    o.device = resolve_device(device);
    EQFLOW_CHECK(atol > 0 && rtol >= 0, "atol must be positive and rtol non-negative");
    EQFLOW_CHECK(steps > 0 && batch > 0, "steps and batch must be positive");
    return o;
}

System system_for(const FlowModel& model, const std::string& name) {
    System system = make_system(name.empty() ? model.system() : name);
    EQFLOW_CHECK(system.n == model.n_particles() && system.d == model.dim(),
                 "the model has " << model.n_particles() << " particles in " << model.dim()
                                  << " dimensions; " << system.name << " has " << system.n << " in "
                                  << system.d);
    return system;
}

// Ctrl-C during a long call: the progress callback asks Python for pending signals and sets
// `stop`; the KeyboardInterrupt is raised again once the library has returned.
struct InterruptPoll {
    std::atomic<bool> stop{false};
    bool interrupted = false;
    void rethrow() {
        if (interrupted) {
            PyErr_SetNone(PyExc_KeyboardInterrupt);
            throw nb::python_error();
        }
    }
};

nb::dict json_to_dict(const Json& j) {
    nb::object loads = nb::module_::import_("json").attr("loads");
    return nb::cast<nb::dict>(loads(j.dump()));
}

}  // namespace
}  // namespace eqflow::python

using namespace eqflow;
using eqflow::python::ArrayRef;
using eqflow::python::DType;
using eqflow::python::InArray;
using eqflow::python::OutArray;

NB_MODULE(_eqflow, m) {
    m.doc() = "eqflow's C++ library (the Python API is the package eqflow; see its __init__)";
    m.attr("__version__") = EQFLOW_VERSION_STRING;
    nb::exception<Error>(m, "Error", PyExc_ValueError);

    m.def("cuda_compiled", &cuda_compiled);
    m.def("cuda_available", &cuda_available);
    m.def("cuda_status", &cuda_status);

    // ---- models ------------------------------------------------------------------------------
    nb::class_<python::Model>(m, "Model")
        .def_prop_ro("n_particles", &python::Model::n)
        .def_prop_ro("dim", &python::Model::d)
        .def_prop_ro("parameter_count", &python::Model::parameter_count)
        .def_prop_ro("config",
                     [](const python::Model& self) { return python::config_dict(self.model()); })
        .def_prop_ro("field_type",
                     [](const python::Model& self) { return field_kind_name(self.model().kind); })
        .def("parameters",
             [](const python::Model& self) {
                 return python::to_numpy(self.model().params, Shape{self.parameter_count()});
             })
        .def("set_parameters",
             [](python::Model& self, const InArray& p) {
                 self.set_parameters(python::host_vector(p, "parameters"));
             })
        .def("layout",
             [](const python::Model& self) {
                 std::vector<std::tuple<std::string, std::vector<int64_t>, int64_t>> out;
                 for (const ParamEntry& e : self.model().parameter_layout())
                     out.emplace_back(e.name, e.shape, e.offset);
                 return out;
             })
        .def(
            "save",
            [](const python::Model& self, const std::string& path, const std::string& dtype) {
                save_model(path, self.model(), python::parse_file_dtype(dtype));
            },
            nb::arg("path"), nb::arg("dtype") = "f64")
        .def("_field", &python::Model::field, nb::arg("x"), nb::arg("t"), nb::arg("v").none(),
             nb::arg("div").none(), nb::arg("params").none(), nb::arg("stream") = 0)
        .def("_backward", &python::Model::backward, nb::arg("x"), nb::arg("t"), nb::arg("dL_dv"),
             nb::arg("dL_dparams"), nb::arg("dL_dx").none(), nb::arg("params").none(),
             nb::arg("stream") = 0);

    m.def(
        "load_model",
        [](const std::string& path) { return new python::Model(load_flow_model(path)); },
        nb::arg("path"));

    m.def(
        "make_model",
        [](int n, int d, const std::string& system, int hidden, int layers, bool attention,
           bool tanh, double coords_range, std::vector<int> atom_types, double length_scale,
           uint64_t seed) {
            EgnnConfig c;
            c.system = system;
            c.n_particles = n;
            c.dim = d;
            c.hidden = hidden;
            c.layers = layers;
            c.attention = attention;
            c.tanh = tanh;
            c.coords_range = coords_range;
            c.atom_types = std::move(atom_types);
            c.length_scale = length_scale;
            EQFLOW_CHECK(std::isfinite(length_scale) && length_scale > 0,
                         "length_scale must be positive, got " << length_scale);
            validate_egnn_config(c);
            EgnnModel model{c, egnn_init_parameters(c, seed)};
            return new python::Model(std::move(model));
        },
        nb::arg("n_particles"), nb::arg("dim"), nb::arg("system"), nb::arg("hidden"),
        nb::arg("layers"), nb::arg("attention"), nb::arg("tanh"), nb::arg("coords_range"),
        nb::arg("atom_types"), nb::arg("length_scale"), nb::arg("seed"));

    // A model from named tensors (a state_dict), checked by the model-file reader itself: every
    // name, shape and the absence of extra tensors.
    m.def(
        "model_from_tensors",
        [](const python::Model& like, const nb::dict& tensors, const std::string& what) {
            SafetensorsFile file = flow_model_to_safetensors(like.model());
            file.tensors.clear();
            for (auto [key, value] : tensors) {
                const std::string name = nb::cast<std::string>(key);
                const InArray arr = nb::cast<InArray>(value);
                const ArrayRef a = python::inspect(arr, name.c_str());
                std::vector<double> values = python::host_vector(arr, name.c_str());
                file.tensors.push_back(SafeTensor::f64(name, a.shape, std::move(values)));
            }
            return new python::Model(flow_model_from_safetensors(file, what));
        },
        nb::arg("like"), nb::arg("tensors"), nb::arg("what"));

    // ---- systems and energies ----------------------------------------------------------------
    nb::class_<System>(m, "System")
        .def_ro("name", &System::name)
        .def_ro("n", &System::n)
        .def_ro("d", &System::d)
        .def_ro("kT", &System::kT)
        .def_ro("atom_types", &System::atom_types)
        .def_prop_ro("kind",
                     [](const System& s) {
                         return s.kind == PotentialKind::double_well     ? "double_well"
                                : s.kind == PotentialKind::lennard_jones ? "lennard_jones"
                                                                         : "molecule";
                     })
        .def("__repr__", [](const System& s) {
            return "eqflow.System('" + s.name + "', n=" + std::to_string(s.n) +
                   ", d=" + std::to_string(s.d) + ")";
        });
    m.def("make_system", &make_system, nb::arg("name"));
    m.def("builtin_system_names", &builtin_system_names);

    m.def(
        "_energy_forces",
        [](const System& system, const InArray& x_in, const OutArray& u_out,
           const std::optional<OutArray>& f_out, uintptr_t stream) {
            const ArrayRef x = python::inspect(x_in, "x"), u = python::inspect(u_out, "u");
            const int64_t nd = static_cast<int64_t>(system.n) * system.d;
            const bool ok =
                (x.shape.size() == 3 && x.shape[1] == system.n && x.shape[2] == system.d) ||
                (x.shape.size() == 2 && x.shape[1] == nd);
            EQFLOW_CHECK(ok, "energy: x has shape " << shape_string(x.shape) << ", expected [B, "
                                                    << system.n << ", " << system.d << "] or [B, "
                                                    << nd << "] for " << system.name);
            const int64_t B = x.shape[0];
            python::require_dtype(x, {DType::f64, DType::f32}, "x", "expected float64 or float32");
            python::require_finite(x, "x");
            python::require_device(u, x.device, "u");
            python::require_shape(u, Shape{B}, "u");
            python::require_dtype(u, {x.dtype}, "u", "expected the dtype of x");
            std::optional<ArrayRef> f;
            if (f_out) {
                f = python::inspect(*f_out, "forces");
                python::require_device(*f, x.device, "forces");
                python::require_shape(*f, x.shape, "forces");
                python::require_dtype(*f, {x.dtype}, "forces", "expected the dtype of x");
            }
            const Shape shape3{B, system.n, system.d};
            nb::gil_scoped_release release;
            Stream s = reinterpret_cast<Stream>(stream);
            if (x.dtype == DType::f64) {
                energy_forces(system, python::view_of<const double>(x, shape3),
                              python::view_of<double>(u, Shape{B}),
                              f ? python::view_of<double>(*f, shape3) : TensorView<double>(), s);
            } else {
                energy_forces(system, python::view_of<const float>(x, shape3),
                              python::view_of<float>(u, Shape{B}),
                              f ? python::view_of<float>(*f, shape3) : TensorView<float>(), s);
            }
            if (x.device == Device::cuda) synchronize(s);
        },
        nb::arg("system"), nb::arg("x"), nb::arg("u"), nb::arg("forces").none(),
        nb::arg("stream") = 0);

    // ---- assignment and couplings ------------------------------------------------------------
    m.def(
        "_assign",
        [](const InArray& cost_in, const OutArray& perm_out,
           const std::optional<OutArray>& total_out, uintptr_t stream) {
            const ArrayRef c = python::inspect(cost_in, "cost"),
                           p = python::inspect(perm_out, "perm");
            EQFLOW_CHECK((c.shape.size() == 3 && c.shape[1] == c.shape[2]) ||
                             (c.shape.size() == 2 && c.shape[0] == c.shape[1]),
                         "assign: cost has shape " << shape_string(c.shape)
                                                   << ", expected [P, n, n] or [n, n]");
            python::require_dtype(c, {DType::f64, DType::f32}, "cost",
                                  "expected float64 or float32");
            const Shape pshape(c.shape.begin(), c.shape.end() - 1);
            python::require_device(p, c.device, "perm");
            python::require_shape(p, pshape, "perm");
            python::require_dtype(p, {DType::i64}, "perm", "expected int64");
            std::optional<ArrayRef> tot;
            const Shape tshape = c.shape.size() == 3 ? Shape{c.shape[0]} : Shape{1};
            if (total_out) {
                tot = python::inspect(*total_out, "total");
                python::require_device(*tot, c.device, "total");
                python::require_shape(*tot, tshape, "total");
                python::require_dtype(*tot, {DType::f64}, "total", "expected float64");
            }
            const int64_t P = c.shape.size() == 3 ? c.shape[0] : 1, n = c.shape.back();
            nb::gil_scoped_release release;
            Buffer<unsigned char> ws(assignment_workspace_bytes(c.device, P, n), c.device);
            TensorView<double> tv =
                tot ? python::view_of<double>(*tot, tshape) : TensorView<double>();
            if (c.dtype == DType::f64)
                linear_sum_assignment(python::view_of<const double>(c, c.shape),
                                      python::view_of<int64_t>(p, pshape), tv, {}, ws.data(),
                                      ws.bytes(), reinterpret_cast<Stream>(stream));
            else
                linear_sum_assignment(python::view_of<const float>(c, c.shape),
                                      python::view_of<int64_t>(p, pshape), tv, {}, ws.data(),
                                      ws.bytes(), reinterpret_cast<Stream>(stream));
        },
        nb::arg("cost"), nb::arg("perm"), nb::arg("total").none(), nb::arg("stream") = 0);

    m.def(
        "_couple",
        [](const std::string& kind, const InArray& x0_in, const InArray& x1_in,
           const OutArray& out_in, const OutArray& pairing_in, const OutArray& cost_in,
           bool allow_reflection, std::vector<int> atom_types, bool frame_starts,
           int refine_iterations, bool exhaustive, int max_starts, int threads, uintptr_t stream) {
            CouplingOptions o;
            o.kind = parse_coupling(kind);
            o.allow_reflection = allow_reflection;
            o.atom_types = std::move(atom_types);
            o.frame_starts = frame_starts;
            o.refine_iterations = refine_iterations;
            o.exhaustive = exhaustive;
            o.max_starts = max_starts;
            o.threads = threads;
            const ArrayRef x0 = python::inspect(x0_in, "x0"), x1 = python::inspect(x1_in, "x1"),
                           out = python::inspect(out_in, "x1_paired"),
                           pairing = python::inspect(pairing_in, "pairing"),
                           cost = python::inspect(cost_in, "cost");
            EQFLOW_CHECK(x0.shape.size() == 3, "couple: x0 has shape " << shape_string(x0.shape)
                                                                       << ", expected [B, n, d]");
            python::require_dtype(x0, {DType::f64, DType::f32}, "x0",
                                  "expected float64 or float32");
            for (const auto& [a, name] : {std::pair{&x1, "x1"}, std::pair{&out, "x1_paired"}}) {
                python::require_device(*a, x0.device, name);
                python::require_shape(*a, x0.shape, name);
                python::require_dtype(*a, {x0.dtype}, name, "expected the dtype of x0");
            }
            python::require_finite(x0, "x0");
            python::require_finite(x1, "x1");
            const Shape bshape{x0.shape[0]};
            python::require_device(pairing, x0.device, "pairing");
            python::require_shape(pairing, bshape, "pairing");
            python::require_dtype(pairing, {DType::i64}, "pairing", "expected int64");
            python::require_device(cost, x0.device, "cost");
            python::require_shape(cost, bshape, "cost");
            python::require_dtype(cost, {DType::f64}, "cost", "expected float64");
            nb::gil_scoped_release release;
            Buffer<unsigned char> ws(
                coupling_workspace_bytes(x0.device, o, x0.shape[0], x0.shape[1], x0.shape[2]),
                x0.device);
            Stream s = reinterpret_cast<Stream>(stream);
            if (x0.dtype == DType::f64)
                couple(o, python::view_of<const double>(x0, x0.shape),
                       python::view_of<const double>(x1, x0.shape),
                       python::view_of<double>(out, x0.shape),
                       python::view_of<int64_t>(pairing, bshape),
                       python::view_of<double>(cost, bshape), ws.data(), ws.bytes(), s);
            else
                couple(o, python::view_of<const float>(x0, x0.shape),
                       python::view_of<const float>(x1, x0.shape),
                       python::view_of<float>(out, x0.shape),
                       python::view_of<int64_t>(pairing, bshape),
                       python::view_of<double>(cost, bshape), ws.data(), ws.bytes(), s);
        },
        nb::arg("kind"), nb::arg("x0"), nb::arg("x1"), nb::arg("x1_paired"), nb::arg("pairing"),
        nb::arg("cost"), nb::arg("allow_reflection"), nb::arg("atom_types"),
        nb::arg("frame_starts"), nb::arg("refine_iterations"), nb::arg("exhaustive"),
        nb::arg("max_starts"), nb::arg("threads"), nb::arg("stream") = 0);

    // ---- the commands: data, train, sample, log-likelihood, eval -------------------------------
    m.def(
        "data",
        [](const System& system, int64_t samples, uint64_t seed, int replicas, double t_max,
           int64_t burn_in, int64_t thin, int chains, int threads) {
            EQFLOW_CHECK(system.kind != PotentialKind::molecule,
                         "data for " << system.name
                                     << " comes from molecular dynamics with OpenMM: use "
                                        "`eqflow data --system "
                                     << system.name << "`");
            EQFLOW_CHECK(samples > 0, "samples must be positive, got " << samples);
            McmcOptions o;
            o.samples = samples;
            o.seed = seed;
            o.replicas = replicas;
            o.t_max = t_max;
            o.burn_in = burn_in;
            o.thin = thin;
            o.chains = chains;
            o.threads = threads;
            std::vector<double> x;
            {
                nb::gil_scoped_release release;
                x = sample_equilibrium(system, o, nullptr);
            }
            return python::to_numpy(std::move(x), Shape{samples, system.n, system.d});
        },
        nb::arg("system"), nb::arg("samples"), nb::arg("seed"), nb::arg("replicas"),
        nb::arg("t_max"), nb::arg("burn_in"), nb::arg("thin"), nb::arg("chains"),
        nb::arg("threads"));

    m.def(
        "train",
        [](const System& system, const InArray& data, const std::string& objective,
           const std::string& field, const std::string& out_dir, int64_t epochs, int64_t batch,
           double lr, int hidden, int layers, int radial_basis, double r_max, int time_basis,
           double sigma, uint64_t seed, const std::string& device, bool reference,
           int64_t ode_steps, bool resume, bool overwrite, double ema, double val_fraction,
           int threads, double length_scale, int64_t log_every, int64_t stop_after, int eqot_starts,
           double time_power, nb::object progress) {
            TrainOptions o;
            o.system = system.name;
            o.likelihood = objective == "likelihood";
            EQFLOW_CHECK(
                o.likelihood || objective == "fm" || objective == "ot" || objective == "eqot",
                "unknown objective '" << objective << "' (choose fm, ot, eqot or likelihood)");
            if (!o.likelihood) o.objective = parse_coupling(objective);
            o.out_dir = out_dir;
            o.epochs = epochs;
            o.batch = batch;
            o.lr = lr;
            o.hidden = hidden;
            o.layers = layers;
            o.sigma = sigma;
            o.kernel_radial = radial_basis;
            o.kernel_r_max = r_max;
            o.kernel_time = time_basis;
            o.seed = seed;
            o.reference = reference;
            o.resume = resume;
            o.overwrite = overwrite;
            o.ema_decay = ema;
            o.validation_fraction = val_fraction;
            o.threads = threads;
            o.log_every = log_every;
            o.stop_after_steps = stop_after;
            EQFLOW_CHECK(eqot_starts >= 0 && eqot_starts <= 8,
                         "eqot_starts must be in 1..8 (0: every start), got " << eqot_starts);
            EQFLOW_CHECK(eqot_starts == 0 || (!o.likelihood && o.objective == CouplingKind::eqot),
                         "eqot_starts applies to objective='eqot' only");
            o.eqot_starts = eqot_starts;
            EQFLOW_CHECK(time_power > 0 && time_power <= 100,
                         "time_power must be in (0, 100], got " << time_power);
            EQFLOW_CHECK(time_power == 1.0 || !o.likelihood,
                         "time_power applies to flow matching (fm, ot, eqot) only");
            o.time_power = time_power;
            o.atom_types = system.atom_types;
            // length_scale 0: the command line's "auto" (the data's RMS for molecules, else 1).
            if (length_scale == 0) {
                o.length_scale = system.kind == PotentialKind::molecule ? 0.0 : 1.0;
                o.scale_to_data = system.kind == PotentialKind::molecule;
            } else {
                EQFLOW_CHECK(std::isfinite(length_scale) && length_scale > 0,
                             "length_scale must be positive or 0 (auto), got " << length_scale);
                o.length_scale = length_scale;
            }
            EQFLOW_CHECK(epochs > 0 && batch > 0 && log_every > 0 && lr > 0,
                         "epochs, batch, log_every and lr must be positive");
            // The rules of `eqflow train` (src/cli/cmd_train.cpp) for the field, the likelihood
            // objective and the device.
            o.field = parse_field_kind(field);
            EQFLOW_CHECK(o.field == FieldKind::kernel || (!radial_basis && !r_max && !time_basis),
                         "radial_basis, r_max and time_basis size the kernel field: use them "
                         "with field='kernel'");
            EQFLOW_CHECK(o.field == FieldKind::egnn || (!hidden && !layers),
                         "hidden and layers size the EGNN: the kernel field takes radial_basis, "
                         "r_max and time_basis");
            EQFLOW_CHECK(radial_basis >= 0 && time_basis >= 0 && r_max >= 0 && std::isfinite(r_max),
                         "radial_basis, time_basis and r_max must be positive or 0 (the "
                         "system's default)");
            if (o.likelihood) {
                EQFLOW_CHECK(o.field == FieldKind::kernel || (device != "cuda" && device != "gpu"),
                             "objective likelihood: EGNN likelihood training on CUDA is not built "
                             "(the CUDA EGNN has no reverse mode of its divergence); use "
                             "device='cpu', or field='kernel'");
                EQFLOW_CHECK(ode_steps == -1 || (ode_steps >= 1 && ode_steps <= 100000),
                             "ode_steps must be in 1..100000, got " << ode_steps);
                if (ode_steps != -1) o.ode_steps = static_cast<int>(ode_steps);
            } else {
                EQFLOW_CHECK(ode_steps == -1, "ode_steps applies to objective='likelihood' only");
            }
            EQFLOW_CHECK(!o.reference || (device != "cuda" && device != "gpu"),
                         "reference is the CPU reference field: use it with device='cpu'");
            // Likelihood training: auto is the CPU (the EGNN's second derivatives exist on the CPU
            // fields only; the kernel field trains on CUDA when asked for explicitly).
            const Device resolved = python::resolve_device(
                o.likelihood && (device == "auto" || device.empty()) ? "cpu" : device);
            o.device = o.reference ? Device::cpu : resolved;
            EQFLOW_CHECK(o.likelihood || coupling_available(o.objective),
                         "the " << objective << " coupling is not available in this build");
            int64_t count = 0;
            std::vector<double> x =
                python::host_configurations(data, system.n, system.d, "data", &count);
            remove_mean(count, system.n, system.d, x.data());  // as the command centres on load
            python::InterruptPoll poll;
            o.stop = &poll.stop;
            // Without a callback of the caller's, progress only polls for Ctrl-C: 10 times a
            // second is enough, and spares a CUDA run the wait for the device after every step.
            if (progress.is_none()) o.progress_interval = 0.1;
            o.progress = [&](int64_t step, int64_t total, double loss, double lr_now) {
                nb::gil_scoped_acquire acquire;
                if (PyErr_CheckSignals() != 0) {
                    PyErr_Clear();
                    poll.interrupted = true;
                    poll.stop.store(true);
                    return;
                }
                if (!progress.is_none()) progress(step, total, loss, lr_now);
            };
            TrainResult r;
            {
                nb::gil_scoped_release release;
                r = train_flow_matching(o, x, count, system.n, system.d);
            }
            poll.rethrow();
            nb::dict info;
            info["step"] = r.step;
            info["total_steps"] = r.total_steps;
            info["steps_per_epoch"] = r.steps_per_epoch;
            info["skipped"] = r.skipped;
            info["train_count"] = r.train_count;
            info["validation_count"] = r.validation_count;
            info["loss"] = r.last_loss;
            info["validation_loss"] = r.validation_loss;
            info["interrupted"] = r.interrupted;
            info["seconds"] = r.seconds;
            return std::make_tuple(new python::Model(std::move(r.model)),
                                   new python::Model(std::move(r.raw_model)), info);
        },
        nb::arg("system"), nb::arg("data"), nb::arg("objective"), nb::arg("field"),
        nb::arg("out_dir"), nb::arg("epochs"), nb::arg("batch"), nb::arg("lr"), nb::arg("hidden"),
        nb::arg("layers"), nb::arg("radial_basis"), nb::arg("r_max"), nb::arg("time_basis"),
        nb::arg("sigma"), nb::arg("seed"), nb::arg("device"), nb::arg("reference"),
        nb::arg("ode_steps"), nb::arg("resume"), nb::arg("overwrite"), nb::arg("ema"),
        nb::arg("val_fraction"), nb::arg("threads"), nb::arg("length_scale"), nb::arg("log_every"),
        nb::arg("stop_after"), nb::arg("eqot_starts"), nb::arg("time_power"),
        nb::arg("progress").none());

    m.def(
        "sample",
        [](const python::Model& self, int64_t count, uint64_t seed, const std::string& system_name,
           const std::string& solver, double atol, double rtol, int steps, int64_t batch,
           int hutchinson, int threads, const std::string& device) {
            EQFLOW_CHECK(count > 0, "samples must be positive, got " << count);
            const FlowModel& model = self.model();
            const FlowOptions fo =
                python::flow_options(solver, atol, rtol, steps, batch, hutchinson, threads, device);
            const System system = python::system_for(model, system_name);
            FlowSamples s;
            std::vector<double> u;
            Reweighting w;
            int64_t mirrored = 0;
            {
                nb::gil_scoped_release release;
                s = sample_model(model, count, seed, fo);
                mirrored = fold_chirality(system, s);
                u = reduced_energies(system, s.x.data(), s.count);
                w = importance_weights(u.data(), s.log_q.data(), s.count);
            }
            const Shape xs{s.count, system.n, system.d};
            nb::dict out;
            out["x"] = python::to_numpy(std::move(s.x), xs);
            out["x0"] = python::to_numpy(std::move(s.x0), xs);
            out["log_q"] = python::to_numpy(std::move(s.log_q), Shape{s.count});
            out["u"] = python::to_numpy(std::move(u), Shape{s.count});
            out["log_w"] = python::to_numpy(std::move(w.log_w), Shape{s.count});
            out["path_length"] = python::to_numpy(std::move(s.path_length), Shape{s.count});
            out["system"] = system.name;
            out["n_samples"] = s.count;
            out["approximate"] = fo.hutchinson;
            out["ess"] = w.ess;
            out["zero_weight_samples"] = w.invalid;
            out["failed_integrations"] = s.failed;
            out["energy_mean_samples"] = w.energy_mean;
            out["energy_mean_reweighted"] = w.energy_mean_reweighted;
            out["function_evals"] = s.ode.row_evals;
            out["length_scale"] = model.length_scale();
            if (folds_chirality(system)) out["mirrored_samples"] = mirrored;
            return out;
        },
        nb::arg("model"), nb::arg("samples"), nb::arg("seed"), nb::arg("system"), nb::arg("solver"),
        nb::arg("atol"), nb::arg("rtol"), nb::arg("steps"), nb::arg("batch"), nb::arg("hutchinson"),
        nb::arg("threads"), nb::arg("device"));

    m.def(
        "log_likelihood",
        [](const python::Model& self, const InArray& x_in, const std::string& solver, double atol,
           double rtol, int steps, int64_t batch, int hutchinson, int threads,
           const std::string& device) {
            const FlowModel& model = self.model();
            const FlowOptions fo =
                python::flow_options(solver, atol, rtol, steps, batch, hutchinson, threads, device);
            int64_t count = 0;
            std::vector<double> x =
                python::host_configurations(x_in, model.n_particles(), model.dim(), "x", &count);
            FlowLikelihood l;
            {
                nb::gil_scoped_release release;
                remove_mean(count, model.n_particles(), model.dim(), x.data());
                l = model_log_likelihood(model, x.data(), count, fo);
            }
            nb::dict out;
            out["log_q"] = python::to_numpy(std::move(l.log_q), Shape{count});
            out["x0"] =
                python::to_numpy(std::move(l.x0), Shape{count, model.n_particles(), model.dim()});
            out["path_length"] = python::to_numpy(std::move(l.path_length), Shape{count});
            out["failed"] = l.failed;
            out["approximate"] = fo.hutchinson;
            return out;
        },
        nb::arg("model"), nb::arg("x"), nb::arg("solver"), nb::arg("atol"), nb::arg("rtol"),
        nb::arg("steps"), nb::arg("batch"), nb::arg("hutchinson"), nb::arg("threads"),
        nb::arg("device"));

    m.def(
        "evaluate",
        [](const python::Model& self, const InArray& test_in, int64_t n_samples, uint64_t seed,
           const std::string& system_name, const std::string& figure, const std::string& solver,
           double atol, double rtol, int steps, int64_t batch, int hutchinson, int threads,
           const std::string& device) {
            EQFLOW_CHECK(n_samples > 0, "samples must be positive, got " << n_samples);
            const FlowModel& model = self.model();
            const FlowOptions fo =
                python::flow_options(solver, atol, rtol, steps, batch, hutchinson, threads, device);
            const System system = python::system_for(model, system_name);
            int64_t n_test = 0;
            std::vector<double> test =
                python::host_configurations(test_in, system.n, system.d, "test", &n_test);
            FlowMetrics metrics;
            FlowSamples samples;
            Reweighting weights;
            {
                nb::gil_scoped_release release;
                remove_mean(n_test, system.n, system.d, test.data());
                metrics = evaluate_flow(model, system, test.data(), n_test, n_samples, seed, fo,
                                        &samples, &weights);
                if (!figure.empty())
                    write_energy_histogram_svg(figure, metrics.histogram,
                                               system.name +
                                                   ": energies of test data, flow "
                                                   "samples and reweighted samples");
            }
            nb::dict out = python::json_to_dict(metrics.to_json());
            out["system"] = system.name;
            if (!figure.empty()) out["figure_energy_histogram"] = figure;
            const Shape xs{samples.count, system.n, system.d};
            out["samples"] = python::to_numpy(std::move(samples.x), xs);
            out["log_w"] = python::to_numpy(std::move(weights.log_w), Shape{samples.count});
            return out;
        },
        nb::arg("model"), nb::arg("test"), nb::arg("samples"), nb::arg("seed"), nb::arg("system"),
        nb::arg("figure"), nb::arg("solver"), nb::arg("atol"), nb::arg("rtol"), nb::arg("steps"),
        nb::arg("batch"), nb::arg("hutchinson"), nb::arg("threads"), nb::arg("device"));
}
