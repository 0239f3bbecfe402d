#include "worker/session/sealed_conversation_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "krul/base/log.h"
#include "krul/rpc/credentials.h"

namespace krul::worker {
namespace {

// Threads that check block tags while the read goes on, so a restore's
// blocks are verified in parallel with each other and with the transfer.
class VerifyPool {
 public:
  explicit VerifyPool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~VerifyPool() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    for (std::thread& t : threads_) t.join();
  }
  void Schedule(std::function<void()> task) {
    absl::MutexLock lock(&mu_);
    tasks_.push_back(std::move(task));
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> task;
      {
        absl::MutexLock lock(&mu_);
        auto ready = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !tasks_.empty(); };
        mu_.Await(absl::Condition(&ready));
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// One read's blocks: each is verified on the pool as it arrives and handed
// to the sink in arrival order once it and every block before it verified.
// Add and Finish are called by the reading thread; the sink is called by
// whichever of them finds the next block ready, never concurrently.
class OrderedVerifier {
 public:
  OrderedVerifier(const KvMacKey& key, const v1::Manifest& manifest, const BlockSink& sink,
                  VerifyPool& pool)
      : key_(key), manifest_(manifest), sink_(sink), pool_(pool) {}
  ~OrderedVerifier() {
    // The pool's tasks refer to this object: wait for them however the read ended.
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
    mu_.Await(absl::Condition(&idle));
  }

  absl::Status Add(uint32_t index, std::string encoded) {
    auto block = std::make_shared<Block>();
    block->index = index;
    block->encoded = std::move(encoded);
    {
      absl::MutexLock lock(&mu_);
      if (!failure_.ok()) return failure_;
      order_.push_back(block);
      ++in_flight_;
    }
    pool_.Schedule([this, block] {
      absl::Status s = VerifyBlockMac(key_, manifest_, block->index, block->encoded);
      absl::MutexLock lock(&mu_);
      block->status = std::move(s);
      block->done = true;
      --in_flight_;
    });
    return HandOver(/*wait=*/false);
  }

  // Hands over the rest once the read returned `read`; the first error of
  // the read, a tag or the sink.
  absl::Status Finish(absl::Status read) {
    if (!read.ok()) {
      absl::MutexLock lock(&mu_);
      if (failure_.ok()) failure_ = read;
    }
    return HandOver(/*wait=*/true);
  }

 private:
  struct Block {
    uint32_t index = 0;
    std::string encoded;
    absl::Status status;
    bool done = false;
  };

  absl::Status HandOver(bool wait) {
    while (true) {
      std::shared_ptr<Block> next;
      {
        absl::MutexLock lock(&mu_);
        if (!failure_.ok()) return failure_;
        if (order_.empty()) return absl::OkStatus();
        next = order_.front();
        if (!next->done) {
          if (!wait) return absl::OkStatus();
          auto done = [&next]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return next->done; };
          mu_.Await(absl::Condition(&done));
        }
        order_.pop_front();
        if (!next->status.ok()) {
          failure_ = next->status;
          return failure_;
        }
      }
      if (absl::Status s = sink_(next->index, std::move(next->encoded)); !s.ok()) {
        absl::MutexLock lock(&mu_);
        failure_ = s;
        return s;
      }
    }
  }

  const KvMacKey& key_;
  const v1::Manifest& manifest_;
  const BlockSink& sink_;
  VerifyPool& pool_;
  absl::Mutex mu_;
  std::deque<std::shared_ptr<Block>> order_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
};

class SealedConversationStore final : public ForwardingConversationStore {
 public:
  SealedConversationStore(std::unique_ptr<ConversationStore> inner, KvMacKeyring keys,
                          int verify_threads)
      : ForwardingConversationStore(std::move(inner)),
        keys_(std::move(keys)),
        pool_(verify_threads > 0 ? std::make_unique<VerifyPool>(verify_threads) : nullptr) {}

  absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                            const std::string& conversation_id,
                                            absl::Time deadline) override {
    absl::StatusOr<v1::Manifest> m = inner().LookupLatest(tenant, conversation_id, deadline);
    if (!m.ok()) return m;
    if (m->key().tenant() != tenant || m->key().conversation_id() != conversation_id) {
      return Rejected(*m, KvIntegrityError("the store answered with another conversation's "
                                           "version"));
    }
    if (absl::Status s = VerifySeal(*m); !s.ok()) return Rejected(*m, s);
    return m;
  }

  absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time deadline) override {
    absl::StatusOr<KvMacKey> key = KeyFor(manifest.key().tenant());
    if (!key.ok()) return Rejected(manifest, key.status());
    if (absl::Status s = VerifyManifestSeal(*key, manifest); !s.ok()) return Rejected(manifest, s);
    absl::Status status;
    if (pool_ == nullptr) {
      status = inner().ReadBlocks(
          manifest, indices,
          [&](uint32_t index, std::string encoded) -> absl::Status {
            // The inner store checked the XXH3 against the sealed BlockRef;
            // the tag says the key holder wrote exactly these bytes here.
            if (absl::Status s = VerifyBlockMac(*key, manifest, index, encoded); !s.ok()) return s;
            return sink(index, std::move(encoded));
          },
          deadline);
    } else {
      OrderedVerifier verifier(*key, manifest, sink, *pool_);
      status = inner().ReadBlocks(
          manifest, indices,
          [&verifier](uint32_t index, std::string encoded) {
            return verifier.Add(index, std::move(encoded));
          },
          deadline);
      status = verifier.Finish(status);
    }
    if (IsKvIntegrityError(status)) return Rejected(manifest, status);
    return status;
  }

  absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                     absl::Time deadline) override {
    absl::StatusOr<KvMacKey> key = KeyFor(manifest.key().tenant());
    if (!key.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot seal the version: ", key.status().message()));
    }
    v1::Manifest sealed = manifest;
    std::vector<std::string_view> views(blocks.begin(), blocks.end());
    if (absl::Status s = SealManifest(*key, views, sealed); !s.ok()) return s;
    return inner().Write(sealed, std::move(blocks), deadline);
  }

 private:
  // The tenant's key; an integrity error when the ring has none (the
  // version cannot be verified, so it must not be used).
  absl::StatusOr<KvMacKey> KeyFor(const std::string& tenant) const {
    absl::StatusOr<KvMacKey> key = keys_.ForTenant(tenant);
    if (key.ok() || key.status().code() != absl::StatusCode::kNotFound) return key;
    return KvIntegrityError(std::string(key.status().message()));
  }

  absl::Status VerifySeal(const v1::Manifest& m) const {
    absl::StatusOr<KvMacKey> key = KeyFor(m.key().tenant());
    if (!key.ok()) return key.status();
    return VerifyManifestSeal(*key, m);
  }

  // Logs a rejected version: every one is an attack, a key mismatch between
  // workers or a version from before the key, and an operator must see it.
  static absl::Status Rejected(const v1::Manifest& m, absl::Status s) {
    if (IsKvIntegrityError(s)) {
      KRUL_LOG(WARNING) << "krul-worker: KV integrity: rejected version of '"
                        << m.key().conversation_id() << "' turn " << m.key().turn() << ": "
                        << s.message();
    }
    return s;
  }

  const KvMacKeyring keys_;
  const std::unique_ptr<VerifyPool> pool_;  // null: blocks are verified inline
};

}  // namespace

std::unique_ptr<ConversationStore> NewSealedConversationStore(
    std::unique_ptr<ConversationStore> inner, KvMacKeyring keys, int verify_threads) {
  if (verify_threads < 0) {
    verify_threads = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4);
  }
  return std::make_unique<SealedConversationStore>(std::move(inner), std::move(keys),
                                                   verify_threads);
}

absl::StatusOr<std::unique_ptr<ConversationStore>> ProtectConversationStore(
    std::unique_ptr<ConversationStore> store, const std::string& key_file,
    const std::vector<std::string>& addresses) {
  if (!key_file.empty()) {
    absl::StatusOr<KvMacKeyring> keys = KvMacKeyring::ReadFile(key_file);
    if (!keys.ok()) return keys.status();
    struct stat st {};
    if (stat(key_file.c_str(), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
      KRUL_LOG(WARNING) << "krul-worker: --kv_mac_key_file " << key_file
                        << " is readable by group or others; chmod 600 it";
    }
    KRUL_LOG(INFO) << "krul-worker: KV integrity: versions are sealed and verified with "
                   << (keys->has_master() ? "a master key (per-tenant keys by HKDF)" : "")
                   << (keys->has_master() && keys->tenant_keys() > 0 ? " and " : "")
                   << (keys->tenant_keys() > 0 ? absl::StrCat(keys->tenant_keys(), " tenant keys")
                                               : "")
                   << "; unsealed or forged versions are recomputed";
    return NewSealedConversationStore(std::move(store), *std::move(keys));
  }
  bool loopback = true;
  for (const std::string& a : addresses) {
    absl::StatusOr<std::string> host = rpc::HostOfAddress(a);
    loopback = loopback && host.ok() && rpc::IsLoopbackHost(*host);
  }
  const char* what =
      "krul-worker: KV integrity: no --kv_mac_key_file: stored KV carries XXH3 checksums "
      "only, which catch accidents but not a writer; anyone who can write to the kvstore can "
      "serve forged KV that changes answers";
  if (loopback) {
    KRUL_LOG(WARNING) << what;
  } else {
    KRUL_LOG(WARNING) << "*** " << what
                      << ". The kvstore is not on loopback: give every worker the same "
                         "--kv_mac_key_file (openssl rand -hex 32) ***";
  }
  return store;
}

}  // namespace krul::worker
