#include "kvstore/options.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace krul::kvstore {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", problem));
}

}  // namespace

absl::StatusOr<TierMode> ParseTierMode(absl::string_view text) {
  if (text == "dram") return TierMode::kDramOnly;
  if (text == "dram+rocksdb") return TierMode::kDramAndRocksDb;
  if (text == "rocksdb") return TierMode::kRocksDbOnly;
  return absl::InvalidArgumentError(
      absl::StrCat("tiers: '", text, "' is not one of dram, dram+rocksdb, rocksdb"));
}

absl::StatusOr<WriteMode> ParseWriteMode(absl::string_view text) {
  if (text == "write-through") return WriteMode::kWriteThrough;
  if (text == "write-back") return WriteMode::kWriteBack;
  return absl::InvalidArgumentError(
      absl::StrCat("write_mode: '", text, "' is not one of write-through, write-back"));
}

absl::StatusOr<GrantScope> ParseGrantScope(absl::string_view text) {
  if (text == "block") return GrantScope::kBlock;
  if (text == "chunk") return GrantScope::kChunk;
  return absl::InvalidArgumentError(
      absl::StrCat("ucx_grant_scope: '", text, "' is not one of block, chunk"));
}

const char* TierModeName(TierMode mode) {
  switch (mode) {
    case TierMode::kDramOnly:
      return "dram";
    case TierMode::kDramAndRocksDb:
      return "dram+rocksdb";
    case TierMode::kRocksDbOnly:
      return "rocksdb";
  }
  return "?";
}

const char* WriteModeName(WriteMode mode) {
  return mode == WriteMode::kWriteThrough ? "write-through" : "write-back";
}

absl::StatusOr<absl::flat_hash_map<std::string, uint64_t>> ParseTenantQuotas(
    absl::string_view text) {
  absl::flat_hash_map<std::string, uint64_t> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, '=');
    absl::string_view tenant = absl::StripAsciiWhitespace(kv.first);
    if (tenant.empty() || kv.second.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant_quotas: '", item, "' is not tenant=bytes"));
    }
    absl::StatusOr<uint64_t> bytes = ParseByteSize(kv.second);
    if (!bytes.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant_quotas: ", tenant, ": ", bytes.status().message()));
    }
    out[std::string(tenant)] = *bytes;
  }
  return out;
}

absl::Status StoreOptions::Validate() const {
  if (dram_capacity_bytes == 0 && tiers != TierMode::kRocksDbOnly) {
    return Bad("dram_capacity_bytes", "must be > 0 when a DRAM tier is used");
  }
  if (!(high_watermark > 0.0 && high_watermark <= 1.0)) {
    return Bad("high_watermark", absl::StrCat(high_watermark, " is not in (0, 1]"));
  }
  if (!(low_watermark >= 0.0 && low_watermark < high_watermark)) {
    return Bad("low_watermark", absl::StrCat(low_watermark, " is not in [0, high_watermark)"));
  }
  if (tiers != TierMode::kDramOnly && rocksdb_path.empty()) {
    return Bad("rocksdb_path", absl::StrCat("required with tiers=", TierModeName(tiers)));
  }
  if (write_mode == WriteMode::kWriteBack && tiers != TierMode::kDramAndRocksDb) {
    return Bad("write_mode", "write-back needs tiers=dram+rocksdb");
  }
  if (rocksdb_write_buffer_bytes < (uint64_t{1} << 20)) {
    return Bad("rocksdb_write_buffer_bytes", "must be at least 1 MiB");
  }
  if (max_staging_bytes == 0) return Bad("max_staging_bytes", "must be > 0");
  if (max_block_bytes < 64 || max_block_bytes > (uint64_t{4} << 30)) {
    return Bad("max_block_bytes", "must be in [64 B, 4 GiB]");
  }
  if (max_blocks_per_version == 0) return Bad("max_blocks_per_version", "must be > 0");
  if (put_timeout <= absl::ZeroDuration()) return Bad("put_timeout", "must be > 0");
  if (default_ttl < absl::ZeroDuration()) return Bad("default_ttl", "must be >= 0");
  if (max_ttl < default_ttl) return Bad("max_ttl", "must be >= default_ttl");
  if (keep_versions > 1000000) return Bad("keep_versions", "above 1000000");
  if (default_lease <= absl::ZeroDuration()) return Bad("default_lease", "must be > 0");
  if (max_lease < default_lease) return Bad("max_lease", "must be >= default_lease");
  if (!allow_unknown_tenants && tenant_quota_bytes.empty()) {
    return Bad("allow_unknown_tenants", "false with no tenants in tenant_quota_bytes");
  }
  for (const auto& [tenant, bytes] : tenant_quota_bytes) {
    if (tenant.empty()) return Bad("tenant_quota_bytes", "empty tenant name");
  }
  return absl::OkStatus();
}

absl::Status ServerOptions::Validate() const {
  if (host.empty()) return Bad("host", "empty");
  if (tls.cert_file.empty() != tls.key_file.empty()) {
    return Bad("tls", "give both tls_cert_file and tls_key_file, or neither");
  }
  if (!tls.client_ca_file.empty() && !tls.enabled()) {
    return Bad("tls_client_ca_file", "mutual TLS needs tls_cert_file and tls_key_file");
  }
  if (tls.refresh_interval < absl::Seconds(1)) return Bad("tls_refresh_interval", "below 1s");
  if (port < 0 || port > 65535) return Bad("port", absl::StrCat(port, " not in [0, 65535]"));
  if (metrics_port < -1 || metrics_port > 65535) {
    return Bad("metrics_port", absl::StrCat(metrics_port, " not in [-1, 65535]"));
  }
  if (max_inline_bytes < 1024 || max_inline_bytes > (uint64_t{1} << 30)) {
    return Bad("max_inline_bytes", "must be in [1 KiB, 1 GiB]");
  }
  if (chunk_bytes < 1024 || chunk_bytes > (uint64_t{64} << 20)) {
    return Bad("chunk_bytes", "must be in [1 KiB, 64 MiB]");
  }
  if (shutdown_grace < absl::ZeroDuration()) return Bad("shutdown_grace", "must be >= 0");
  if (maintenance_interval <= absl::ZeroDuration()) {
    return Bad("maintenance_interval", "must be > 0");
  }
  if (absl::Status s = store.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("store.", s.message()));
  }
  return absl::OkStatus();
}

}  // namespace krul::kvstore
