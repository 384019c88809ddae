// eqflow/tensor.h: a small view type that carries a shape and where the data lives, and an
// owning tensor built on Buffer. Row-major (C order) throughout; a batch of configurations is
// [B][n][d] (docs/design.md section 2).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "eqflow/buffer.h"
#include "eqflow/device.h"
#include "eqflow/error.h"

namespace eqflow {

using Shape = std::vector<int64_t>;

inline int64_t shape_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
}

inline std::string shape_string(const Shape& shape) {
    std::ostringstream oss;
    oss << "[";
    for (size_t i = 0; i < shape.size(); ++i) oss << (i ? ", " : "") << shape[i];
    oss << "]";
    return oss.str();
}

// A non-owning view: pointer + shape + device. T may be const.
template <class T>
struct TensorView {
    T* data = nullptr;
    Shape shape;
    Device device = Device::cpu;

    TensorView() = default;
    TensorView(T* data_, Shape shape_, Device device_ = Device::cpu)
        : data(data_), shape(std::move(shape_)), device(device_) {}
    // A view of mutable data converts to a view of const data.
    template <class U,
              class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
    TensorView(const TensorView<U>& other)
        : data(other.data), shape(other.shape), device(other.device) {}

    int64_t numel() const { return shape_numel(shape); }
    int rank() const { return static_cast<int>(shape.size()); }
    int64_t size(int i) const { return shape.at(static_cast<size_t>(i < 0 ? rank() + i : i)); }
    bool empty() const { return data == nullptr && numel() == 0; }
    bool defined() const { return data != nullptr || (!shape.empty() && numel() == 0); }
};

// An owning tensor.
template <class T>
class Tensor {
  public:
    Tensor() = default;
    Tensor(Shape shape, Device device = Device::cpu)
        : shape_(std::move(shape)), buffer_(static_cast<size_t>(shape_numel(shape_)), device) {}

    static Tensor zeros(Shape shape, Device device = Device::cpu) {
        Tensor t(std::move(shape), device);
        t.buffer_.zero();
        return t;
    }
    static Tensor from_host(const std::vector<T>& values, Shape shape,
                            Device device = Device::cpu) {
        EQFLOW_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape),
                     values.size() << " values do not fill shape " << shape_string(shape));
        Tensor t(std::move(shape), device);
        t.buffer_.copy_from_host(values.data(), values.size());
        return t;
    }

    T* data() { return buffer_.data(); }
    const T* data() const { return buffer_.data(); }
    const Shape& shape() const { return shape_; }
    Device device() const { return buffer_.device(); }
    int64_t numel() const { return shape_numel(shape_); }
    int64_t size(int i) const {
        return shape_.at(static_cast<size_t>(i < 0 ? static_cast<int>(shape_.size()) + i : i));
    }

    TensorView<T> view() { return {buffer_.data(), shape_, buffer_.device()}; }
    TensorView<const T> view() const { return {buffer_.data(), shape_, buffer_.device()}; }
    TensorView<const T> cview() const { return view(); }

    Tensor to(Device device, Stream stream = nullptr) const {
        Tensor out;
        out.shape_ = shape_;
        out.buffer_ = buffer_.to(device, stream);
        return out;
    }
    std::vector<T> to_vector() const {
        std::vector<T> v(static_cast<size_t>(numel()));
        buffer_.copy_to_host(v.data(), v.size());
        return v;
    }
    // Same data, new shape with the same number of elements.
    void reshape(Shape shape) {
        EQFLOW_CHECK(shape_numel(shape) == numel(),
                     "cannot reshape " << shape_string(shape_) << " to " << shape_string(shape));
        shape_ = std::move(shape);
    }

  private:
    Shape shape_;
    Buffer<T> buffer_;
};

// Argument checks shared by the public entry points.
template <class T>
void check_shape(const TensorView<T>& v, const Shape& expected, const char* name) {
    EQFLOW_CHECK(v.shape == expected, name << " has shape " << shape_string(v.shape)
                                           << ", expected " << shape_string(expected));
    EQFLOW_CHECK(v.data != nullptr || v.numel() == 0, name << " has no data");
}

}  // namespace eqflow
