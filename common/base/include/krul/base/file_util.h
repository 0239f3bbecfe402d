// Bounded reads of local files for the loaders. Internal to krul_engine.
#ifndef KRUL_BASE_FILE_UTIL_H_
#define KRUL_BASE_FILE_UTIL_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace krul::internal {

// A read-only file with its size known up front, so a loader can check that
// the sizes a header claims fit in the file before allocating anything.
class InputFile {
 public:
  // NOT_FOUND if `path` does not exist, FAILED_PRECONDITION if it is not a
  // regular file or cannot be opened.
  static absl::StatusOr<InputFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  uint64_t position() const { return position_; }
  uint64_t remaining() const { return size_ - position_; }

  // Reads exactly `n` bytes at the current position. DATA_LOSS ("truncated")
  // naming `what` when fewer remain.
  absl::Status Read(void* dst, uint64_t n, const char* what);
  // Moves to `offset`; DATA_LOSS when beyond the end.
  absl::Status Seek(uint64_t offset, const char* what);

 private:
  struct Closer {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::string path_;
  std::unique_ptr<std::FILE, Closer> file_;
  uint64_t size_ = 0;
  uint64_t position_ = 0;
};

}  // namespace krul::internal

#endif  // KRUL_BASE_FILE_UTIL_H_
