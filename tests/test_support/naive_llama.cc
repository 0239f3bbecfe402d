#include "test_support/naive_llama.h"

#include <cmath>
#include <complex>

namespace krul::testing {
namespace {

std::vector<double> MatVec(const float* w, int out, int in, const std::vector<double>& x) {
  std::vector<double> y(out, 0.0);
  for (int r = 0; r < out; ++r) {
    for (int i = 0; i < in; ++i)
      y[r] += static_cast<double>(w[static_cast<size_t>(r) * in + i]) * x[i];
  }
  return y;
}

std::vector<double> Norm(const std::vector<double>& x, const float* weight, double eps) {
  double mean_square = 0;
  for (double v : x) mean_square += v * v;
  mean_square /= static_cast<double>(x.size());
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = weight[i] * x[i] / std::sqrt(mean_square + eps);
  return y;
}

// RoPE as a complex rotation: pair (2i, 2i+1) is the complex number
// v[2i] + j v[2i+1], multiplied by exp(j * pos * theta^(-2i / rotary)).
void Rotate(std::vector<double>& v, int heads, int head_size, int rotary, int pos, double theta) {
  for (int h = 0; h < heads; ++h) {
    for (int i = 0; i < rotary / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / rotary);
      std::complex<double> z(v[h * head_size + 2 * i], v[h * head_size + 2 * i + 1]);
      z *= std::polar(1.0, angle);
      v[h * head_size + 2 * i] = z.real();
      v[h * head_size + 2 * i + 1] = z.imag();
    }
  }
}

}  // namespace

NaiveLlama::NaiveLlama(const Model& model)
    : model_(model),
      keys_(model.config().n_layers),
      values_(model.config().n_layers),
      last_attention_(model.config().n_layers) {}

std::vector<double> NaiveLlama::Forward(int token, int pos) {
  const ModelConfig& c = model_.config();
  const int dim = c.dim, hs = c.head_size(), kv_dim = c.kv_dim();
  std::vector<double> x(dim);
  for (int i = 0; i < dim; ++i)
    x[i] = model_.token_embedding()[static_cast<size_t>(token) * dim + i];
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = model_.layer(l);
    std::vector<double> xn = Norm(x, w.rms_att, c.norm_eps);
    std::vector<double> q = MatVec(w.wq, dim, dim, xn);
    std::vector<double> k = MatVec(w.wk, kv_dim, dim, xn);
    std::vector<double> v = MatVec(w.wv, kv_dim, dim, xn);
    Rotate(q, c.n_heads, hs, c.rotary_dim(), pos, c.rope_theta);
    Rotate(k, c.n_kv_heads, hs, c.rotary_dim(), pos, c.rope_theta);
    keys_[l].resize(pos + 1);
    values_[l].resize(pos + 1);
    keys_[l][pos] = k;
    values_[l][pos] = v;
    std::vector<double> att(dim, 0.0);
    last_attention_[l].assign(c.n_heads, {});
    for (int h = 0; h < c.n_heads; ++h) {
      const int kvh = h * c.n_kv_heads / c.n_heads;  // heads grouped in order
      std::vector<double> scores(pos + 1);
      double max_score = -1e300;
      for (int j = 0; j <= pos; ++j) {  // causal: keys up to and including pos
        double s = 0;
        for (int i = 0; i < hs; ++i) s += q[h * hs + i] * keys_[l][j][kvh * hs + i];
        scores[j] = s / std::sqrt(static_cast<double>(hs));
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0;
      for (double& s : scores) sum += (s = std::exp(s - max_score));
      for (double& s : scores) s /= sum;
      for (int j = 0; j <= pos; ++j) {
        for (int i = 0; i < hs; ++i) att[h * hs + i] += scores[j] * values_[l][j][kvh * hs + i];
      }
      last_attention_[l][h] = scores;
    }
    std::vector<double> o = MatVec(w.wo, dim, dim, att);
    for (int i = 0; i < dim; ++i) x[i] += o[i];
    xn = Norm(x, w.rms_ffn, c.norm_eps);
    std::vector<double> gate = MatVec(w.w1, c.hidden_dim, dim, xn);
    std::vector<double> up = MatVec(w.w3, c.hidden_dim, dim, xn);
    for (int i = 0; i < c.hidden_dim; ++i) gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
    std::vector<double> down = MatVec(w.w2, dim, c.hidden_dim, gate);
    for (int i = 0; i < dim; ++i) x[i] += down[i];
  }
  x = Norm(x, model_.rms_final(), c.norm_eps);
  return MatVec(model_.classifier(), c.vocab_size, dim, x);
}

}  // namespace krul::testing
