#include "krul/base/file_util.h"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace krul::internal {

absl::StatusOr<InputFile> InputFile::Open(const std::string& path) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": not a regular file"));
  }
  InputFile file;
  file.path_ = path;
  file.file_.reset(std::fopen(path.c_str(), "rb"));
  if (!file.file_) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  file.size_ = std::filesystem::file_size(path, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat(path, ": cannot stat: ", ec.message()));
  return file;
}

absl::Status InputFile::Read(void* dst, uint64_t n, const char* what) {
  if (n > remaining()) {
    return absl::DataLossError(absl::StrCat(path_, ": truncated: ", what, " needs ", n,
                                            " bytes at offset ", position_, " but only ",
                                            remaining(), " remain"));
  }
  if (n > 0 && std::fread(dst, 1, n, file_.get()) != n) {
    return absl::DataLossError(absl::StrCat(path_, ": read error in ", what));
  }
  position_ += n;
  return absl::OkStatus();
}

absl::Status InputFile::Seek(uint64_t offset, const char* what) {
  if (offset > size_) {
    return absl::DataLossError(absl::StrCat(path_, ": truncated: ", what, " at offset ", offset,
                                            " is beyond the end (", size_, " bytes)"));
  }
  if (std::fseek(file_.get(), static_cast<long>(offset), SEEK_SET) != 0) {
    return absl::DataLossError(absl::StrCat(path_, ": cannot seek to ", what));
  }
  position_ = offset;
  return absl::OkStatus();
}

}  // namespace krul::internal
