#include "test_support/test_data.h"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace krul::testing {

std::optional<std::string> DataFile(std::string_view relative) {
  const char* dir = std::getenv("KRUL_DATA_DIR");
  if (dir == nullptr || *dir == '\0') return std::nullopt;
  std::filesystem::path path = std::filesystem::path(dir) / std::string(relative);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  return path.string();
}

std::optional<std::string> DataDirectory(std::string_view relative) {
  const char* dir = std::getenv("KRUL_DATA_DIR");
  if (dir == nullptr || *dir == '\0') return std::nullopt;
  std::filesystem::path path = std::filesystem::path(dir) / std::string(relative);
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return std::nullopt;
  return path.string();
}

std::string ScratchDir() {
  static std::atomic<int> counter{0};
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "krul";
  std::filesystem::path path =
      std::filesystem::temp_directory_path() /
      ("krul-test-" + std::to_string(::getpid()) + "-" + name + "-" + std::to_string(counter++));
  std::filesystem::remove_all(path);
  std::filesystem::create_directories(path);
  return path.string();
}

void WriteFileOrDie(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  ASSERT_TRUE(out.good()) << "cannot write " << path;
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ScopedAddressSpaceCap::ScopedAddressSpaceCap(size_t headroom_bytes) {
  std::ifstream statm("/proc/self/statm");
  unsigned long long pages = 0;
  struct rlimit limit;
  if (!(statm >> pages) || getrlimit(RLIMIT_AS, &limit) != 0) return;
  const unsigned long long current = pages * static_cast<unsigned long long>(sysconf(_SC_PAGESIZE));
  const unsigned long long cap = current + headroom_bytes;
  if (limit.rlim_max != RLIM_INFINITY && cap > limit.rlim_max) return;
  old_soft_ = limit.rlim_cur;
  limit.rlim_cur = cap;
  active_ = setrlimit(RLIMIT_AS, &limit) == 0;
}

ScopedAddressSpaceCap::~ScopedAddressSpaceCap() {
  if (!active_) return;
  struct rlimit limit;
  getrlimit(RLIMIT_AS, &limit);
  limit.rlim_cur = old_soft_;
  setrlimit(RLIMIT_AS, &limit);
}

}  // namespace krul::testing
