#include "kvstore/storage/rocksdb_tier.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/write_batch.h>

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "krul/base/byte_order.h"
#include "krul/kvformat/manifest.h"

namespace krul::kvstore {
namespace {

constexpr char kManifestPrefix = 'm';
constexpr char kBlockPrefix = 'b';

// Integers in keys are big-endian so that keys sort numerically (a turn
// after its predecessors) under RocksDB's bytewise comparator.
using ::krul::internal::AppendBigEndian;
using ::krul::internal::GetBigEndian;

// prefix, then the version: lengths are explicit so no tenant or
// conversation id can be a prefix of another's key.
std::string VersionPrefix(char prefix, const VersionKey& key) {
  std::string out;
  out.reserve(1 + 1 + key.tenant.size() + 2 + key.conversation_id.size() + 4 + 4);
  out.push_back(prefix);
  AppendBigEndian(out, key.tenant.size(), 1);
  out += key.tenant;
  AppendBigEndian(out, key.conversation_id.size(), 2);
  out += key.conversation_id;
  AppendBigEndian(out, key.turn, 4);
  return out;
}

// Parses a manifest key; false when it is malformed.
bool ParseManifestKeySlice(const rocksdb::Slice& k, VersionKey* out) {
  const char* p = k.data();
  size_t n = k.size();
  if (n < 1 + 1 || p[0] != kManifestPrefix) return false;
  size_t tenant_len = static_cast<uint8_t>(p[1]);
  size_t pos = 2;
  if (n < pos + tenant_len + 2) return false;
  out->tenant.assign(p + pos, tenant_len);
  pos += tenant_len;
  size_t conv_len = GetBigEndian(p + pos, 2);
  pos += 2;
  if (n != pos + conv_len + 4) return false;
  out->conversation_id.assign(p + pos, conv_len);
  pos += conv_len;
  out->turn = static_cast<uint32_t>(GetBigEndian(p + pos, 4));
  return true;
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat("rocksdb ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() || s.IsNoSpace()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

}  // namespace

std::string RocksDbTier::ManifestKey(const VersionKey& key) {
  return VersionPrefix(kManifestPrefix, key);
}

bool RocksDbTier::ParseManifestKey(std::string_view key, VersionKey* out) {
  return ParseManifestKeySlice(rocksdb::Slice(key.data(), key.size()), out);
}

std::string RocksDbTier::BlockKey(const VersionKey& key, uint32_t index) {
  std::string out = VersionPrefix(kBlockPrefix, key);
  AppendBigEndian(out, index, 4);
  return out;
}

absl::StatusOr<std::unique_ptr<RocksDbTier>> RocksDbTier::Open(const RocksDbTierOptions& options) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.IncreaseParallelism(2);
  o.write_buffer_size = options.write_buffer_bytes;
  // KV payloads are floating point noise to a compressor.
  o.compression = rocksdb::kNoCompression;
  o.enable_blob_files = true;
  o.min_blob_size = options.min_blob_bytes;
  o.blob_file_size = uint64_t{256} << 20;
  o.blob_compression_type = rocksdb::kNoCompression;
  // Deleted and expired versions leave garbage in blob files; let
  // compaction reclaim it.
  o.enable_blob_garbage_collection = true;
  // RocksDB creates the last directory only; create its parents too.
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(options.path).parent_path(), ec);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(o, options.path, &raw);
  if (!s.ok()) {
    absl::Status st = FromRocks(s, absl::StrCat("open ", options.path));
    // A path we cannot use is an environment problem, not a bug.
    if (st.code() == absl::StatusCode::kInternal) return absl::UnavailableError(st.message());
    return st;
  }
  return std::unique_ptr<RocksDbTier>(
      new RocksDbTier(std::unique_ptr<rocksdb::DB>(raw), options.sync));
}

RocksDbTier::RocksDbTier(std::unique_ptr<rocksdb::DB> db, bool sync)
    : db_(std::move(db)), sync_(sync) {}

RocksDbTier::~RocksDbTier() {
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

absl::Status RocksDbTier::WriteVersion(const VersionKey& key, const v1::Manifest& manifest,
                                       const std::vector<BufferPtr>& blocks, bool replace) {
  rocksdb::WriteBatch batch;
  if (replace) {
    // The old version may have had more blocks: drop them first (the Puts
    // below get later sequence numbers, so they survive the tombstone).
    // Only on replace: range tombstones cost every later read a little.
    rocksdb::Status del = batch.DeleteRange(BlockKey(key, 0), BlockKey(key, 0xFFFFFFFFu));
    if (!del.ok()) return FromRocks(del, "batch delete range");
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    rocksdb::Status s = batch.Put(BlockKey(key, static_cast<uint32_t>(i)),
                                  rocksdb::Slice(blocks[i]->data(), blocks[i]->size()));
    if (!s.ok()) return FromRocks(s, "batch put");
  }
  // The manifest goes last in the batch; the batch is atomic anyway, but the
  // order keeps the invariant readable: no manifest without its blocks.
  rocksdb::Status s = batch.Put(ManifestKey(key), EncodeStoredManifest(manifest));
  if (!s.ok()) return FromRocks(s, "batch put");
  rocksdb::WriteOptions wo;
  wo.sync = sync_;
  return FromRocks(db_->Write(wo, &batch), "write");
}

absl::StatusOr<v1::Manifest> RocksDbTier::ReadManifest(const VersionKey& key) {
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s = db_->Get(ro, db_->DefaultColumnFamily(), ManifestKey(key), &value);
  if (!s.ok()) return FromRocks(s, "get manifest");
  return DecodeStoredManifest(std::string_view(value.data(), value.size()));
}

absl::StatusOr<BufferPtr> RocksDbTier::ReadBlock(const VersionKey& key, uint32_t index,
                                                 BufferAllocator* allocator) {
  rocksdb::PinnableSlice value;
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  rocksdb::Status s = db_->Get(ro, db_->DefaultColumnFamily(), BlockKey(key, index), &value);
  if (!s.ok()) return FromRocks(s, "get block");
  std::unique_ptr<ByteBuffer> buf =
      allocator != nullptr ? allocator->Allocate(value.size()) : nullptr;
  if (buf == nullptr) buf = ByteBuffer::Allocate(value.size());
  if (buf == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory reading ", value.size()));
  }
  std::memcpy(buf->data(), value.data(), value.size());
  return BufferPtr(std::move(buf));
}

absl::Status RocksDbTier::DeleteVersion(const VersionKey& key) {
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.Delete(ManifestKey(key));
  if (s.ok()) {
    s = batch.DeleteRange(BlockKey(key, 0), BlockKey(key, 0xFFFFFFFFu));
  }
  if (!s.ok()) return FromRocks(s, "batch delete");
  rocksdb::WriteOptions wo;
  wo.sync = sync_;
  return FromRocks(db_->Write(wo, &batch), "delete");
}

absl::Status RocksDbTier::ForEachManifest(
    const std::function<void(const VersionKey&, absl::StatusOr<v1::Manifest>)>& fn) {
  rocksdb::ReadOptions ro;
  ro.verify_checksums = true;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  const std::string start(1, kManifestPrefix);
  for (it->Seek(start); it->Valid() && it->key().starts_with(start); it->Next()) {
    VersionKey key;
    if (!ParseManifestKeySlice(it->key(), &key)) continue;  // Not ours; never written by us.
    fn(key, DecodeStoredManifest(std::string_view(it->value().data(), it->value().size())));
  }
  return FromRocks(it->status(), "scan manifests");
}

absl::Status RocksDbTier::Flush() {
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo), "flush");
}

}  // namespace krul::kvstore
