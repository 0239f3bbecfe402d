// Helpers for tests that read the staged real data (../shared/data) and
// write scratch files.
#ifndef KRUL_TESTS_TEST_SUPPORT_TEST_DATA_H_
#define KRUL_TESTS_TEST_SUPPORT_TEST_DATA_H_

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "gtest/gtest.h"

namespace krul::testing {

// Path of `relative` under the data folder ($KRUL_DATA_DIR, set by CTest to
// ../shared/data), or nullopt when the file does not exist.
std::optional<std::string> DataFile(std::string_view relative);

// Path of the folder `relative` under the data folder, or nullopt.
std::optional<std::string> DataDirectory(std::string_view relative);

// A fresh directory under the test's temp dir, removed by the OS later.
std::string ScratchDir();

// A scratch directory removed (with its contents) when the object dies, so
// tests that write large files (RocksDB, reports) do not fill /tmp.
class TempDir {
 public:
  TempDir() : path_(ScratchDir()) {}
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes `bytes` to `path`, failing the test on error.
void WriteFileOrDie(const std::string& path, std::string_view bytes);

// Reads a whole file, failing the test on error.
std::string ReadFileOrDie(const std::string& path);

// Caps this process's address space at its current size plus `headroom_bytes`
// for the object's lifetime, so a test can prove that code under test makes
// no huge allocation: one would fail (std::bad_alloc) instead of succeeding
// quietly on a machine with plenty of memory. The old limit is restored on
// destruction. Not for sanitizer builds (they reserve terabytes up front).
class ScopedAddressSpaceCap {
 public:
  explicit ScopedAddressSpaceCap(size_t headroom_bytes);
  ~ScopedAddressSpaceCap();
  ScopedAddressSpaceCap(const ScopedAddressSpaceCap&) = delete;
  ScopedAddressSpaceCap& operator=(const ScopedAddressSpaceCap&) = delete;

 private:
  bool active_ = false;
  unsigned long long old_soft_ = 0;
};

}  // namespace krul::testing

// Declares `var` as the path of a data file or skips the test with a message.
#define KRUL_REQUIRE_DATA_FILE(var, relative)                                      \
  std::string var;                                                                 \
  do {                                                                             \
    auto krul_data_file_ = ::krul::testing::DataFile(relative);                    \
    if (!krul_data_file_) {                                                        \
      GTEST_SKIP() << "shared data file '" << (relative)                           \
                   << "' not found (set KRUL_DATA_DIR to the shared/data folder)"; \
    }                                                                              \
    var = *krul_data_file_;                                                        \
  } while (0)

#endif  // KRUL_TESTS_TEST_SUPPORT_TEST_DATA_H_
