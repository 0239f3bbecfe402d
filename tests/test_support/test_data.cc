#include "test_support/test_data.h"

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

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
  std::filesystem::path path = std::filesystem::temp_directory_path() /
                               ("krul-test-" + std::to_string(::getpid()) + "-" + name + "-" +
                                std::to_string(counter++));
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

}  // namespace krul::testing
