#include "krul/compress/pair_calibration.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace krul {
namespace {

constexpr int kMaxLayers = 4096;

bool HasSpace(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return std::isspace(static_cast<unsigned char>(c)); });
}

// Centred, scaled logs of a profile: the K then the V merge errors of every
// pair a < b.
std::vector<double> Profile(int L, const std::vector<double>& key,
                            const std::vector<double>& value) {
  std::vector<double> p;
  for (const std::vector<double>* m : {&key, &value}) {
    for (int a = 0; a < L; ++a) {
      for (int b = a + 1; b < L; ++b)
        p.push_back(std::log((*m)[static_cast<size_t>(a) * L + b] + 1e-9));
    }
  }
  if (p.empty()) return p;
  double mean = 0;
  for (double v : p) mean += v;
  mean /= p.size();
  double var = 0;
  for (double v : p) var += (v - mean) * (v - mean);
  const double sd = std::sqrt(var / p.size());
  for (double& v : p) v = sd > 0 ? (v - mean) / sd : 0.0;
  return p;
}

void AppendTriangle(std::string& out, int L, const std::vector<double>& m) {
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b)
      absl::StrAppendFormat(&out, " %.17g", m[static_cast<size_t>(a) * L + b]);
  }
}

}  // namespace

absl::Status PairCalibration::Add(PairReference r) {
  const int L = n_layers_;
  if (L < 2 || L > kMaxLayers) {
    return absl::InvalidArgumentError(absl::StrCat("calibration for ", L, " layers"));
  }
  const size_t LL = static_cast<size_t>(L) * L;
  if (r.merge_key.size() != LL || r.merge_value.size() != LL || r.cost.size() != LL ||
      r.edge_mass.size() != static_cast<size_t>(L)) {
    return absl::InvalidArgumentError(
        absl::StrCat("reference '", r.id, "' does not have ", L, " layers"));
  }
  if (r.id.empty() || r.domain.empty() || HasSpace(r.id) || HasSpace(r.domain)) {
    return absl::InvalidArgumentError("reference id and domain must be non-empty words");
  }
  for (const std::vector<double>* v : {&r.merge_key, &r.merge_value, &r.cost, &r.edge_mass}) {
    for (double x : *v) {
      if (!std::isfinite(x) || x < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("reference '", r.id, "' has a negative or non-finite value"));
      }
    }
  }
  references_.push_back(std::move(r));
  return absl::OkStatus();
}

absl::StatusOr<PairCostPrediction> PairCalibration::Predict(const MergeErrors& own, int k,
                                                            std::string_view exclude_id) const {
  if (k < 1) return absl::InvalidArgumentError("k must be >= 1");
  const int L = n_layers_;
  if (own.n_layers != L) {
    return absl::InvalidArgumentError(
        absl::StrCat("merge errors of ", own.n_layers, " layers; calibration has ", L));
  }
  const std::vector<double> mine = Profile(L, own.key, own.value);
  std::vector<std::pair<double, size_t>> by_distance;
  for (size_t i = 0; i < references_.size(); ++i) {
    const PairReference& r = references_[i];
    if (!exclude_id.empty() && r.id == exclude_id) continue;
    const std::vector<double> theirs = Profile(L, r.merge_key, r.merge_value);
    double d = 0;
    for (size_t j = 0; j < mine.size(); ++j) d += (mine[j] - theirs[j]) * (mine[j] - theirs[j]);
    by_distance.emplace_back(d, i);
  }
  if (by_distance.empty()) {
    return absl::FailedPreconditionError("the calibration has no reference to compare with");
  }
  // Ties go to the earlier reference, so the prediction never depends on
  // sort stability.
  std::sort(by_distance.begin(), by_distance.end());
  const size_t n = std::min<size_t>(k, by_distance.size());
  PairCostPrediction out;
  out.cost.assign(static_cast<size_t>(L) * L, 0.0);
  for (size_t j = 0; j < n; ++j) {
    const PairReference& r = references_[by_distance[j].second];
    for (size_t i = 0; i < out.cost.size(); ++i) out.cost[i] += r.cost[i] / n;
    out.neighbours.push_back(r.id);
    out.domains.push_back(r.domain);
  }
  return out;
}

absl::StatusOr<std::vector<double>> PairCalibration::MeanCost(std::string_view exclude_id) const {
  std::vector<double> mean(static_cast<size_t>(n_layers_) * n_layers_, 0.0);
  int n = 0;
  for (const PairReference& r : references_) {
    if (!exclude_id.empty() && r.id == exclude_id) continue;
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += r.cost[i];
    ++n;
  }
  if (n == 0) return absl::FailedPreconditionError("the calibration has no reference left");
  for (double& v : mean) v /= n;
  return mean;
}

absl::StatusOr<double> PairCalibration::EdgeMassQuantile(double q,
                                                         std::string_view exclude_id) const {
  if (!(q >= 0 && q <= 1)) return absl::InvalidArgumentError("quantile outside [0, 1]");
  std::vector<double> masses;
  for (const PairReference& r : references_) {
    if (!exclude_id.empty() && r.id == exclude_id) continue;
    masses.insert(masses.end(), r.edge_mass.begin(), r.edge_mass.end());
  }
  if (masses.empty()) return absl::FailedPreconditionError("the calibration has no reference left");
  std::sort(masses.begin(), masses.end());
  const double pos = q * (masses.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(masses.size() - 1, lo + 1);
  return masses[lo] + (pos - lo) * (masses[hi] - masses[lo]);
}

std::string SerializePairCalibration(const PairCalibration& c) {
  const int L = c.n_layers();
  std::string out = absl::StrCat("krul-pair-calibration 1\nlayers ", L, "\n");
  for (const PairReference& r : c.references()) {
    absl::StrAppend(&out, "reference ", r.id, " ", r.domain, "\nedge_mass");
    for (double v : r.edge_mass) absl::StrAppendFormat(&out, " %.17g", v);
    absl::StrAppend(&out, "\nmerge_key");
    AppendTriangle(out, L, r.merge_key);
    absl::StrAppend(&out, "\nmerge_value");
    AppendTriangle(out, L, r.merge_value);
    absl::StrAppend(&out, "\ncost");
    AppendTriangle(out, L, r.cost);
    absl::StrAppend(&out, "\n");
  }
  return out;
}

absl::StatusOr<PairCalibration> ParsePairCalibration(std::string_view std_text) {
  const absl::string_view text(std_text.data(), std_text.size());
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  auto bad = [](size_t line, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("pair calibration line ", line + 1, ": ", why));
  };
  if (lines.size() < 2 || lines[0] != "krul-pair-calibration 1") {
    return bad(0, "expected 'krul-pair-calibration 1'");
  }
  std::vector<absl::string_view> head = absl::StrSplit(lines[1], ' ');
  int L = 0;
  if (head.size() != 2 || head[0] != "layers" || !absl::SimpleAtoi(head[1], &L) || L < 2 ||
      L > kMaxLayers) {
    return bad(1, "expected 'layers L' with L in [2, 4096]");
  }
  PairCalibration calibration(L);
  const size_t tri = static_cast<size_t>(L) * (L - 1) / 2;
  size_t i = 2;
  while (i < lines.size()) {
    if (i + 5 > lines.size()) return bad(i, "a reference needs five lines");
    std::vector<absl::string_view> ref = absl::StrSplit(lines[i], ' ');
    if (ref.size() != 3 || ref[0] != "reference") return bad(i, "expected 'reference id domain'");
    PairReference r;
    r.id = std::string(ref[1].data(), ref[1].size());
    r.domain = std::string(ref[2].data(), ref[2].size());
    struct Field {
      const char* name;
      size_t count;
      bool triangle;
      std::vector<double>* to;
    };
    const Field fields[] = {{"edge_mass", static_cast<size_t>(L), false, &r.edge_mass},
                            {"merge_key", tri, true, &r.merge_key},
                            {"merge_value", tri, true, &r.merge_value},
                            {"cost", tri, true, &r.cost}};
    for (int f = 0; f < 4; ++f) {
      const size_t at = i + 1 + f;
      std::vector<absl::string_view> words = absl::StrSplit(lines[at], ' ');
      if (words.size() != fields[f].count + 1 || words[0] != fields[f].name) {
        return bad(
            at, absl::StrCat("expected '", fields[f].name, "' and ", fields[f].count, " numbers"));
      }
      std::vector<double> values(fields[f].count);
      for (size_t w = 0; w < values.size(); ++w) {
        if (!absl::SimpleAtod(words[w + 1], &values[w])) return bad(at, "not a number");
      }
      if (!fields[f].triangle) {
        *fields[f].to = std::move(values);
        continue;
      }
      fields[f].to->assign(static_cast<size_t>(L) * L, 0.0);
      size_t w = 0;
      for (int a = 0; a < L; ++a) {
        for (int b = a + 1; b < L; ++b, ++w) {
          (*fields[f].to)[static_cast<size_t>(a) * L + b] = values[w];
          (*fields[f].to)[static_cast<size_t>(b) * L + a] = values[w];
        }
      }
    }
    if (auto s = calibration.Add(std::move(r)); !s.ok()) return bad(i, s.message());
    i += 5;
  }
  return calibration;
}

absl::StatusOr<PairCalibration> ReadPairCalibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open pair calibration ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  auto parsed = ParsePairCalibration(buf.str());
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat(path, ": ", parsed.status().message()));
  }
  return parsed;
}

absl::Status WritePairCalibration(const PairCalibration& calibration, const std::string& path) {
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << SerializePairCalibration(calibration);
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace krul
