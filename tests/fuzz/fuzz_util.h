// Helpers for the libFuzzer targets in tests/fuzz.
#ifndef KRUL_TESTS_FUZZ_FUZZ_UTIL_H_
#define KRUL_TESTS_FUZZ_FUZZ_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

// A property the code under test promises. A violation aborts, which
// libFuzzer reports as a crash and saves the input that caused it.
#define FUZZ_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

namespace krul::fuzz {

// An in-memory file (memfd) with a path, for the loaders that take a path
// (models, tokenizers): they read it exactly as they read a file on disk,
// through the same code, with no disk I/O per input.
class MemFile {
 public:
  MemFile() {
    fd_ = memfd_create("krul-fuzz", 0);
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  ~MemFile() { close(fd_); }

  // Replaces the contents with `bytes`; returns the path to open.
  const std::string& Write(std::string_view bytes) {
    if (ftruncate(fd_, 0) != 0) std::abort();
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = pwrite(fd_, bytes.data() + done, bytes.size() - done, done);
      if (n <= 0) std::abort();
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

}  // namespace krul::fuzz

#endif  // KRUL_TESTS_FUZZ_FUZZ_UTIL_H_
