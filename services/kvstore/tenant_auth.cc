#include "kvstore/tenant_auth.h"

#include <utility>

#include "krul/rpc/bearer_token.h"

namespace krul::kvstore {

absl::StatusOr<absl::flat_hash_map<std::string, std::string>> ParseTenantTokens(
    absl::string_view text) {
  return rpc::ParseTokenTable(text);
}

std::unique_ptr<TenantAuth> TenantAuth::Trusting() {
  return std::unique_ptr<TenantAuth>(new TenantAuth());
}

absl::StatusOr<std::unique_ptr<TenantAuth>> TenantAuth::FromFile(const std::string& path) {
  absl::StatusOr<std::unique_ptr<rpc::TokenTable>> table =
      rpc::TokenTable::FromFile(path, "tenant_tokens_file");
  if (!table.ok()) return table.status();
  std::unique_ptr<TenantAuth> auth(new TenantAuth());
  auth->table_ = *std::move(table);
  return auth;
}

absl::Status TenantAuth::Reload() {
  return table_ == nullptr ? absl::OkStatus() : table_->Reload();
}

size_t TenantAuth::size() const { return table_ == nullptr ? 0 : table_->size(); }

absl::StatusOr<Caller> TenantAuth::Authenticate(const grpc::ServerContext& ctx) const {
  if (trusting()) return Caller{"", true};
  const auto& md = ctx.client_metadata();
  auto it = md.find(rpc::kAuthorizationKey);
  if (it == md.end()) return AuthenticateHeader(nullptr);
  const absl::string_view value(it->second.data(), it->second.size());
  return AuthenticateHeader(&value);
}

absl::StatusOr<Caller> TenantAuth::AuthenticateHeader(
    const absl::string_view* authorization) const {
  if (trusting()) return Caller{"", true};
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        "this kvstore requires a bearer token (metadata 'authorization: Bearer <token>')");
  }
  absl::StatusOr<std::string> tenant = table_->LookupHeader(authorization);
  if (!tenant.ok()) return tenant.status();
  return Caller{*std::move(tenant), false};
}

}  // namespace krul::kvstore
