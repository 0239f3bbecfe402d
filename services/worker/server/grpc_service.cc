#include "worker/server/grpc_service.h"

#include "absl/strings/str_cat.h"
#include "krul/base/log.h"
#include "krul/rpc/bearer_token.h"
#include "krul/rpc/grpc_status.h"
#include "worker/session/session.h"

namespace krul::worker {
namespace {

void FillStats(const CompletionStats& s, v1::ChatStats* out) {
  out->set_prompt_tokens(s.prompt_tokens);
  out->set_completion_tokens(s.completion_tokens);
  out->set_ttft_ms(s.ttft_ms);
  out->set_mode(s.mode);
  out->set_restore(s.restore);
  out->set_fallback_reason(s.fallback_reason);
  out->set_restored_tokens(s.restored_tokens);
  out->set_recomputed_tokens(s.recomputed_tokens);
  out->set_loaded_tokens(s.loaded_tokens);
  out->set_loaded_bytes(s.loaded_bytes);
  out->set_conversation_id(s.conversation_id);
  out->set_worker_id(s.worker_id);
}

}  // namespace

absl::StatusOr<std::string> WorkerGrpcService::Tenant(const grpc::ServerContext& context) const {
  if (api_keys_ == nullptr) return std::string();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(rpc::kAuthorizationKey);
  if (it == metadata.end()) return api_keys_->Authenticate(nullptr);
  const absl::string_view value(it->second.data(), it->second.size());
  return api_keys_->Authenticate(&value);
}

absl::StatusOr<ChatRequest> ChatRequestFromProto(const v1::ChatRequest& in,
                                                 const WorkerOptions& options) {
  ChatRequest r;
  r.model = in.model();
  if (in.messages().empty()) {
    return absl::InvalidArgumentError("messages is empty: send at least one message");
  }
  if (in.messages_size() > options.max_messages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "messages has ", in.messages_size(), " entries; the limit is ", options.max_messages));
  }
  for (int i = 0; i < in.messages_size(); ++i) {
    const v1::ChatMessage& m = in.messages(i);
    ChatMessage msg;
    switch (m.role()) {
      case v1::CHAT_ROLE_SYSTEM:
        msg.role = Role::kSystem;
        break;
      case v1::CHAT_ROLE_USER:
        msg.role = Role::kUser;
        break;
      case v1::CHAT_ROLE_ASSISTANT:
        msg.role = Role::kAssistant;
        break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("messages[", i, "].role is unspecified or unknown"));
    }
    msg.content = m.content();
    r.messages.push_back(std::move(msg));
  }
  if (r.messages.back().role == Role::kAssistant) {
    return absl::InvalidArgumentError("the last message must not be the assistant's");
  }
  r.max_tokens = in.max_tokens() == 0
                     ? options.default_max_tokens
                     : static_cast<int>(std::min<uint32_t>(in.max_tokens(), 1u << 30));
  if (r.max_tokens > options.max_tokens_limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens is ", r.max_tokens, "; it must be in [1, ", options.max_tokens_limit, "]"));
  }
  if (in.has_temperature()) {
    if (!(in.temperature() >= 0 && in.temperature() <= 2)) {
      return absl::InvalidArgumentError("temperature must be in [0, 2]");
    }
    r.temperature = in.temperature();
  }
  if (in.has_top_p()) {
    if (!(in.top_p() > 0 && in.top_p() <= 1)) {
      return absl::InvalidArgumentError("top_p must be in (0, 1]");
    }
    r.top_p = in.top_p();
  }
  if (in.has_seed()) r.seed = in.seed();
  r.conversation_id = in.conversation_id();
  if (r.conversation_id.size() > 256) {
    return absl::InvalidArgumentError("conversation_id exceeds 256 bytes");
  }
  if (!in.mode().empty()) {
    auto mode = ParseRestoreMode(in.mode());
    if (!mode.ok()) return mode.status();
    r.mode = std::string(RestoreModeName(*mode));
  }
  return r;
}

grpc::Status WorkerGrpcService::Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                                     v1::ChatResponse* response) {
  const absl::Time accepted = absl::Now();
  absl::StatusOr<std::string> tenant = Tenant(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  auto parsed = ChatRequestFromProto(*request, core_->options());
  if (!parsed.ok()) return ToGrpcStatus(parsed.status());
  parsed->tenant = *std::move(tenant);
  auto session = core_->StartChat(*parsed, accepted);
  if (!session.ok()) return ToGrpcStatus(session.status());
  while (!(*session)->done()) {
    auto piece = (*session)->Next();
    if (!piece.ok()) return ToGrpcStatus(piece.status());
  }
  response->set_content((*session)->content());
  for (int t : (*session)->completion_tokens()) response->add_token_ids(t);
  response->set_finish_reason((*session)->finish_reason());
  FillStats((*session)->stats(), response->mutable_stats());
  (*session)->Commit();
  return grpc::Status::OK;
}

grpc::Status WorkerGrpcService::ChatStream(grpc::ServerContext* context,
                                           const v1::ChatRequest* request,
                                           grpc::ServerWriter<v1::ChatChunk>* writer) {
  const absl::Time accepted = absl::Now();
  absl::StatusOr<std::string> tenant = Tenant(*context);
  if (!tenant.ok()) return ToGrpcStatus(tenant.status());
  auto parsed = ChatRequestFromProto(*request, core_->options());
  if (!parsed.ok()) return ToGrpcStatus(parsed.status());
  parsed->tenant = *std::move(tenant);
  auto started = core_->StartChat(*parsed, accepted);
  if (!started.ok()) return ToGrpcStatus(started.status());
  Session& session = **started;
  while (!session.done()) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    const size_t before = session.completion_tokens().size();
    auto piece = session.Next();
    if (!piece.ok()) return ToGrpcStatus(piece.status());
    v1::ChatChunk chunk;
    chunk.set_delta(*piece);
    for (size_t i = before; i < session.completion_tokens().size(); ++i) {
      chunk.add_token_ids(session.completion_tokens()[i]);
    }
    if (session.done()) {
      chunk.set_finish_reason(session.finish_reason());
      FillStats(session.stats(), chunk.mutable_stats());
    }
    if (!writer->Write(chunk)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
  }
  session.Commit();
  return grpc::Status::OK;
}

grpc::Status WorkerGrpcService::Models(grpc::ServerContext* context, const v1::ModelsRequest*,
                                       v1::ModelsResponse* response) {
  if (absl::StatusOr<std::string> tenant = Tenant(*context); !tenant.ok()) {
    return ToGrpcStatus(tenant.status());
  }
  response->add_models(core_->model_name());
  return grpc::Status::OK;
}

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(WorkerCore* core,
                                                              const std::string& host, int port,
                                                              const rpc::ServerTlsOptions& tls,
                                                              bool allow_insecure,
                                                              std::unique_ptr<ApiKeys> api_keys) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      rpc::MakeServerCredentials(tls);
  if (!credentials.ok()) return credentials.status();
  if (!tls.enabled()) {
    absl::StatusOr<std::string> warning =
        rpc::CheckPlaintext("worker gRPC service", host, allow_insecure);
    if (!warning.ok()) return warning.status();
    KRUL_LOG(WARNING) << "krul-worker: " << *warning;
  }
  std::unique_ptr<GrpcServer> server(new GrpcServer());
  server->api_keys_ = std::move(api_keys);
  server->service_ = std::make_unique<WorkerGrpcService>(core, server->api_keys_.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", port), *credentials, &server->port_);
  builder.RegisterService(server->service_.get());
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot bind gRPC to ", host, ":", port));
  }
  return server;
}

void GrpcServer::Stop() {
  if (server_ != nullptr)
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace krul::worker
