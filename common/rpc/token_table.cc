#include "krul/rpc/token_table.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "krul/rpc/bearer_token.h"

namespace krul::rpc {
namespace {

bool IsLowerHex64(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

absl::StatusOr<std::string> ReadAll(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    std::string msg = absl::StrCat(flag, " '", path, "': ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

}  // namespace

absl::StatusOr<absl::flat_hash_map<std::string, std::string>> ParseTokenTable(
    absl::string_view text, const TenantCheck& check) {
  absl::flat_hash_map<std::string, std::string> out;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const size_t colon = line.rfind(':');
    if (colon == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant tokens line ", line_no, ": expected tenant:sha256hex"));
    }
    absl::string_view tenant = absl::StripAsciiWhitespace(line.substr(0, colon));
    std::string hex = absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (tenant.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant tokens line ", line_no, ": empty tenant"));
    }
    if (check != nullptr) {
      if (absl::Status s = check(tenant); !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tenant tokens line ", line_no, ": ", s.message()));
      }
    }
    if (!IsLowerHex64(hex)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant tokens line ", line_no,
                       ": the hash is not 64 hex digits (store SHA-256 hashes, never the tokens)"));
    }
    if (!out.emplace(hex, std::string(tenant)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant tokens line ", line_no, ": this hash is listed twice"));
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<TokenTable>> TokenTable::FromFile(std::string path, std::string flag,
                                                                 TenantCheck check) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty path"));
  std::unique_ptr<TokenTable> table(
      new TokenTable(std::move(path), std::move(flag), std::move(check)));
  if (absl::Status s = table->Reload(); !s.ok()) return s;
  if (table->size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(table->flag_, " '", table->path_, "' names no tenant"));
  }
  return table;
}

absl::Status TokenTable::Reload() {
  struct stat st {};
  if (stat(path_.c_str(), &st) != 0) {
    const int err = errno;
    std::string msg = absl::StrCat(flag_, " '", path_, "': ", std::strerror(err),
                                   "; keeping the previous tokens");
    return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
  }
  {
    absl::MutexLock lock(&mu_);
    if (st.st_size == size_ && st.st_mtim.tv_sec == mtime_.tv_sec &&
        st.st_mtim.tv_nsec == mtime_.tv_nsec) {
      return absl::OkStatus();
    }
  }
  absl::StatusOr<std::string> text = ReadAll(path_, flag_);
  if (!text.ok()) return text.status();
  absl::StatusOr<absl::flat_hash_map<std::string, std::string>> table =
      ParseTokenTable(*text, check_);
  absl::MutexLock lock(&mu_);
  // Remember the version even when it is malformed: the error is reported
  // once, not on every periodic call.
  mtime_ = st.st_mtim;
  size_ = st.st_size;
  if (!table.ok()) {
    return absl::Status(table.status().code(),
                        absl::StrCat(flag_, " '", path_, "': ", table.status().message(),
                                     "; keeping the previous tokens"));
  }
  tenants_by_hash_ = *std::move(table);
  return absl::OkStatus();
}

size_t TokenTable::size() const {
  absl::MutexLock lock(&mu_);
  return tenants_by_hash_.size();
}

absl::StatusOr<std::string> TokenTable::Lookup(absl::string_view token) const {
  const std::string hash = Sha256Hex(token);
  absl::MutexLock lock(&mu_);
  auto it = tenants_by_hash_.find(hash);
  if (it == tenants_by_hash_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second;
}

absl::StatusOr<std::string> TokenTable::LookupHeader(const absl::string_view* authorization) const {
  if (authorization == nullptr) {
    return absl::UnauthenticatedError("no 'authorization: Bearer <token>'");
  }
  absl::StatusOr<absl::string_view> token = ParseBearer(*authorization);
  if (!token.ok()) return token.status();
  return Lookup(*token);
}

}  // namespace krul::rpc
