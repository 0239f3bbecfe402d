// Immutable, shared block bytes. A committed block lives in exactly one
// ByteBuffer that the DRAM tier, in-flight reads, UCX grants and the
// write-back flusher share through BufferPtr, so serving a block never
// copies it and a reader keeps its bytes alive even if the version is
// evicted or deleted meanwhile.
//
// A buffer either owns heap memory (Allocate) or views memory owned by
// someone else (a slice of a bigger buffer, or transport-registered arena
// memory; see transport_arena.h), kept alive through `owner`. Buffers in
// registered memory know their region and offset, so the UCX data plane can
// describe them to clients without registering anything per request.
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_BYTE_BUFFER_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_BYTE_BUFFER_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <utility>

namespace krul {
class MemoryRegion;
}

namespace krul::kvstore {

class ByteBuffer {
 public:
  // An uninitialized heap buffer of `size` bytes, 64-byte aligned (good for
  // registration and SIMD checksums); nullptr when memory is exhausted.
  //
  // Buffers of kMapBytes and more are mapped pages of their own (mmap), so
  // an evicted or deleted version returns its memory to the OS at once.
  // From malloc they would not: glibc raises its mmap threshold after the
  // first large free, serves later versions from its heap, and keeps freed
  // heap memory, so the process stayed at its peak (1.30 GB with a 1 GiB
  // DRAM cap) long after eviction brought the tier down.
  static constexpr size_t kMapBytes = size_t{1} << 20;
  static std::unique_ptr<ByteBuffer> Allocate(size_t size) {
    size_t rounded = (size + 63) / 64 * 64;
    if (rounded >= kMapBytes) {
      void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      auto b = std::unique_ptr<ByteBuffer>(
          new ByteBuffer(static_cast<char*>(p), size, nullptr, nullptr, 0));
      b->mapped_bytes_ = rounded;
      return b;
    }
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (p == nullptr) return nullptr;
    auto b = std::unique_ptr<ByteBuffer>(
        new ByteBuffer(static_cast<char*>(p), size, nullptr, nullptr, 0));
    b->heap_ = true;
    return b;
  }

  // Views `size` bytes at `data` owned by `owner` (kept alive as long as
  // this buffer). `region`/`region_offset`: where the bytes lie in
  // transport-registered memory, if they do.
  ByteBuffer(char* data, size_t size, std::shared_ptr<const void> owner, const MemoryRegion* region,
             uint64_t region_offset)
      : data_(data),
        size_(size),
        owner_(std::move(owner)),
        region_(region),
        region_offset_(region_offset) {}

  // [offset, offset + size) of `parent` as a buffer of its own that keeps
  // `parent` alive.
  static std::shared_ptr<ByteBuffer> Slice(const std::shared_ptr<ByteBuffer>& parent, size_t offset,
                                           size_t size) {
    return std::make_shared<ByteBuffer>(parent->data_ + offset, size, parent, parent->region_,
                                        parent->region_offset_ + offset);
  }

  ~ByteBuffer() {
    if (heap_) std::free(data_);
    if (mapped_bytes_ > 0) munmap(data_, mapped_bytes_);
  }
  ByteBuffer(const ByteBuffer&) = delete;
  ByteBuffer& operator=(const ByteBuffer&) = delete;

  char* data() { return data_; }
  const char* data() const { return data_; }
  size_t size() const { return size_; }
  std::string_view view() const { return std::string_view(data_, size_); }
  // Null unless the bytes lie in transport-registered memory.
  const MemoryRegion* region() const { return region_; }
  uint64_t region_offset() const { return region_offset_; }

 private:
  char* data_;
  size_t size_;
  bool heap_ = false;
  size_t mapped_bytes_ = 0;  // > 0: pages of our own (mmap).
  std::shared_ptr<const void> owner_;
  const MemoryRegion* region_;
  uint64_t region_offset_;
};

using BufferPtr = std::shared_ptr<const ByteBuffer>;

// Where the store gets block memory. Thread-safe.
class BufferAllocator {
 public:
  virtual ~BufferAllocator() = default;
  // `size` uninitialized bytes, or nullptr when this allocator is full (the
  // store then falls back to the heap).
  virtual std::unique_ptr<ByteBuffer> Allocate(size_t size) = 0;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_BYTE_BUFFER_H_
