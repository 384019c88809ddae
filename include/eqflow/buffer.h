// eqflow/buffer.h: RAII memory on the host or the device. Movable, not copyable; copies between
// host and device are explicit.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include "eqflow/device.h"
#include "eqflow/error.h"
#include "eqflow/export.h"

namespace eqflow {

namespace detail {
// Raw allocation on either side. Host memory is 64-byte aligned. Device calls throw an Error
// when the CUDA backend is absent or the runtime fails.
EQFLOW_API void* allocate_bytes(std::size_t bytes, Device device);
EQFLOW_API void free_bytes(void* ptr, Device device) noexcept;
// How many device allocations allocate_bytes has made in this process (tests use it to show
// that a loop allocates nothing).
EQFLOW_API std::size_t device_allocation_count();
// Copies bytes between any two sides; asynchronous on `stream` where both sides allow it, and
// synchronous when the host is involved (so host data is valid on return).
EQFLOW_API void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                           std::size_t bytes, Stream stream = nullptr);
EQFLOW_API void zero_bytes(void* ptr, Device device, std::size_t bytes, Stream stream = nullptr);
}  // namespace detail

template <class T>
class Buffer {
    static_assert(std::is_trivially_copyable_v<T>, "Buffer holds plain numbers");

  public:
    Buffer() = default;
    Buffer(std::size_t count, Device device) : size_(count), device_(device) {
        if (count > 0) data_ = static_cast<T*>(detail::allocate_bytes(count * sizeof(T), device));
    }
    ~Buffer() { detail::free_bytes(data_, device_); }

    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& other) noexcept { swap(other); }
    Buffer& operator=(Buffer&& other) noexcept {
        Buffer tmp(std::move(other));
        swap(tmp);
        return *this;
    }

    T* data() { return data_; }
    const T* data() const { return data_; }
    std::size_t size() const { return size_; }
    std::size_t bytes() const { return size_ * sizeof(T); }
    Device device() const { return device_; }
    bool empty() const { return size_ == 0; }

    void zero(Stream stream = nullptr) { detail::zero_bytes(data_, device_, bytes(), stream); }

    // Copies `count` elements from host memory into this buffer (count <= size()).
    void copy_from_host(const T* src, std::size_t count, Stream stream = nullptr) {
        EQFLOW_CHECK(count <= size_, "copy of " << count << " elements into a buffer of " << size_);
        detail::copy_bytes(data_, device_, src, Device::cpu, count * sizeof(T), stream);
    }
    // Copies `count` elements of this buffer into host memory (count <= size()).
    void copy_to_host(T* dst, std::size_t count, Stream stream = nullptr) const {
        EQFLOW_CHECK(count <= size_,
                     "copy of " << count << " elements out of a buffer of " << size_);
        detail::copy_bytes(dst, Device::cpu, data_, device_, count * sizeof(T), stream);
    }
    // A copy of the whole buffer on `device`.
    Buffer to(Device device, Stream stream = nullptr) const {
        Buffer out(size_, device);
        detail::copy_bytes(out.data_, device, data_, device_, bytes(), stream);
        return out;
    }

  private:
    void swap(Buffer& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        std::swap(device_, other.device_);
    }

    T* data_ = nullptr;
    std::size_t size_ = 0;
    Device device_ = Device::cpu;
};

}  // namespace eqflow
