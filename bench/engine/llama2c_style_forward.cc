#include "engine/llama2c_style_forward.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace krul::bench {
namespace {

void RmsNorm(float* o, const float* x, const float* weight, int size, float eps) {
  float ss = 0.0f;
  for (int j = 0; j < size; j++) ss += x[j] * x[j];
  ss = 1.0f / sqrtf(ss / size + eps);
  for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

void Softmax(float* x, int size) {
  float max_val = x[0];
  for (int i = 1; i < size; i++) max_val = x[i] > max_val ? x[i] : max_val;
  float sum = 0.0f;
  for (int i = 0; i < size; i++) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < size; i++) x[i] /= sum;
}

// xout (d) = W (d, n) @ x (n): the matmul that dominates run.c's time.
void MatVec(float* xout, const float* x, const float* w, int n, int d) {
#pragma omp parallel for
  for (int i = 0; i < d; i++) {
    float val = 0.0f;
    for (int j = 0; j < n; j++) val += w[static_cast<size_t>(i) * n + j] * x[j];
    xout[i] = val;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Llama2cStyleForward>> Llama2cStyleForward::Open(
    const std::string& path, const Model& model, int num_threads) {
  const ModelConfig& c = model.config();
  std::unique_ptr<Llama2cStyleForward> f(new Llama2cStyleForward(c, num_threads));
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  struct stat st;
  ::fstat(fd, &st);
  f->mapping_bytes_ = static_cast<size_t>(st.st_size);
  f->mapping_ = ::mmap(nullptr, f->mapping_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (f->mapping_ == MAP_FAILED) {
    f->mapping_ = nullptr;
    return absl::InternalError(absl::StrCat(path, ": mmap failed"));
  }
  // The legacy layout: 7 int32 header, then the tensors in llama2.c's order.
  ModelConfig shared = c;
  shared.shared_classifier = true;
  const size_t expected =
      28 +
      sizeof(float) * (Llama2cWeightCount(shared) + static_cast<size_t>(c.seq_len) * c.head_size() +
                       (c.shared_classifier ? 0 : size_t{1} * c.vocab_size * c.dim));
  if (f->mapping_bytes_ != expected) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": size does not match its config"));
  }
  const float* weights = reinterpret_cast<const float*>(static_cast<const char*>(f->mapping_) + 28);
  f->weights_ = MapLlama2cLayout(c, weights, static_cast<int64_t>(c.seq_len) * c.head_size());
  return f;
}

Llama2cStyleForward::~Llama2cStyleForward() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

Llama2cStyleForward::Llama2cStyleForward(const ModelConfig& config, int num_threads)
    : config_(config) {
  const ModelConfig& c = config;
#ifdef _OPENMP
  if (num_threads > 0) omp_set_num_threads(num_threads);
#endif
  x_.resize(c.dim);
  xb_.resize(c.dim);
  xb2_.resize(c.dim);
  hb_.resize(c.hidden_dim);
  hb2_.resize(c.hidden_dim);
  q_.resize(c.dim);
  att_.resize(static_cast<size_t>(c.n_heads) * c.seq_len);
  logits_.resize(c.vocab_size);
  key_cache_.resize(static_cast<size_t>(c.n_layers) * c.seq_len * c.kv_dim());
  value_cache_.resize(key_cache_.size());
}

const float* Llama2cStyleForward::Forward(int token, int pos) {
  const ModelConfig& c = config_;
  const int dim = c.dim, kv_dim = c.kv_dim(), hidden = c.hidden_dim, head_size = c.head_size();
  const int kv_mul = c.n_heads / c.n_kv_heads;
  float* x = x_.data();
  std::memcpy(x, weights_.token_embedding + static_cast<size_t>(token) * dim, dim * sizeof(float));

  for (int l = 0; l < c.n_layers; l++) {
    const LayerWeights& w = weights_.layers[l];
    RmsNorm(xb_.data(), x, w.rms_att, dim, c.norm_eps);
    const size_t loff = static_cast<size_t>(l) * c.seq_len * kv_dim;
    float* k = key_cache_.data() + loff + static_cast<size_t>(pos) * kv_dim;
    float* v = value_cache_.data() + loff + static_cast<size_t>(pos) * kv_dim;
    MatVec(q_.data(), xb_.data(), w.wq, dim, dim);
    MatVec(k, xb_.data(), w.wk, dim, kv_dim);
    MatVec(v, xb_.data(), w.wv, dim, kv_dim);

    for (int i = 0; i < dim; i += 2) {
      const int head_dim = i % head_size;
      const float freq = 1.0f / powf(c.rope_theta, head_dim / static_cast<float>(head_size));
      const float val = pos * freq, fcr = cosf(val), fci = sinf(val);
      const int rotn = i < kv_dim ? 2 : 1;
      for (int which = 0; which < rotn; which++) {
        float* vec = which == 0 ? q_.data() : k;
        const float v0 = vec[i], v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
      }
    }

#pragma omp parallel for
    for (int h = 0; h < c.n_heads; h++) {
      const float* q = q_.data() + h * head_size;
      float* att = att_.data() + static_cast<size_t>(h) * c.seq_len;
      for (int t = 0; t <= pos; t++) {
        const float* kt =
            key_cache_.data() + loff + static_cast<size_t>(t) * kv_dim + (h / kv_mul) * head_size;
        float score = 0.0f;
        for (int i = 0; i < head_size; i++) score += q[i] * kt[i];
        att[t] = score / sqrtf(static_cast<float>(head_size));
      }
      Softmax(att, pos + 1);
      float* out = xb_.data() + h * head_size;
      std::memset(out, 0, head_size * sizeof(float));
      for (int t = 0; t <= pos; t++) {
        const float* vt =
            value_cache_.data() + loff + static_cast<size_t>(t) * kv_dim + (h / kv_mul) * head_size;
        for (int i = 0; i < head_size; i++) out[i] += att[t] * vt[i];
      }
    }
    MatVec(xb2_.data(), xb_.data(), w.wo, dim, dim);
    for (int i = 0; i < dim; i++) x[i] += xb2_[i];

    RmsNorm(xb_.data(), x, w.rms_ffn, dim, c.norm_eps);
    MatVec(hb_.data(), xb_.data(), w.w1, dim, hidden);
    MatVec(hb2_.data(), xb_.data(), w.w3, dim, hidden);
    for (int i = 0; i < hidden; i++) {
      float val = hb_[i];
      val *= 1.0f / (1.0f + expf(-val));
      hb_[i] = val * hb2_[i];
    }
    MatVec(xb_.data(), hb_.data(), w.w2, hidden, dim);
    for (int i = 0; i < dim; i++) x[i] += xb_[i];
  }
  RmsNorm(x, x, weights_.rms_final, dim, c.norm_eps);
  MatVec(logits_.data(), x, weights_.classifier, dim, c.vocab_size);
  return logits_.data();
}

}  // namespace krul::bench
