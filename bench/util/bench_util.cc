#include "util/bench_util.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace krul::bench {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Max(const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); }

double Min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

std::string DataDir(const std::string& flag_value) {
  std::string dir = flag_value;
  if (dir.empty() && std::getenv("KRUL_DATA_DIR") != nullptr) dir = std::getenv("KRUL_DATA_DIR");
  if (dir.empty()) dir = "../shared/data";
  return dir;
}

void CheckOk(const absl::Status& status, const std::string& what) {
  if (status.ok()) return;
  std::fprintf(stderr, "%s: %s\n", what.c_str(), status.ToString().c_str());
  std::exit(1);
}

}  // namespace krul::bench
