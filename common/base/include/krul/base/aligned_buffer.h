// A heap array aligned for SIMD loads (64 bytes, one cache line).
//
// Move-only owner; the memory is released in the destructor. Contents are
// zero-initialized. Not thread-safe for concurrent resizing; concurrent reads
// and writes of distinct elements are fine.
#ifndef KRUL_BASE_ALIGNED_BUFFER_H_
#define KRUL_BASE_ALIGNED_BUFFER_H_

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <utility>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace krul {

inline constexpr size_t kBufferAlignment = 64;

// Buffers at least this large (model weights, KV caches) are aligned to 2 MiB
// and backed by transparent huge pages where the kernel allows it (THP in
// "madvise" mode): streaming hundreds of MB of weights per decoded token
// otherwise spends a noticeable share of its time on TLB misses.
inline constexpr size_t kHugePageBytes = size_t{2} << 20;
inline constexpr size_t kHugePageThreshold = size_t{4} << 20;

template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size) { Resize(size); }
  ~AlignedBuffer() { std::free(data_); }

  AlignedBuffer(AlignedBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  // Replaces the contents with `size` zeroed elements. Throws std::bad_alloc
  // when memory is exhausted (callers validate sizes before allocating).
  void Resize(size_t size) {
    std::free(data_);
    data_ = nullptr;
    size_ = 0;
    if (size == 0) return;
    const size_t alignment =
        size * sizeof(T) >= kHugePageThreshold ? kHugePageBytes : kBufferAlignment;
    size_t bytes = (size * sizeof(T) + alignment - 1) / alignment * alignment;
    void* p = std::aligned_alloc(alignment, bytes);
    if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    // Advice only: failure (no THP support) leaves ordinary pages.
    if (alignment == kHugePageBytes) ::madvise(p, bytes, MADV_HUGEPAGE);
#endif
    std::memset(p, 0, bytes);
    data_ = static_cast<T*>(p);
    size_ = size;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }
  std::span<T> span() { return {data_, size_}; }
  std::span<const T> span() const { return {data_, size_}; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace krul

#endif  // KRUL_BASE_ALIGNED_BUFFER_H_
