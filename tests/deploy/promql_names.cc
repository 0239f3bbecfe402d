#include "promql_names.h"

#include <cctype>

#include "absl/strings/str_replace.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace krul::deploy_test {
namespace {

bool IdentStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}
bool IdentChar(char c) { return IdentStart(c) || std::isdigit(static_cast<unsigned char>(c)); }

const std::set<std::string>& Keywords() {
  static const auto* k = new std::set<std::string>{
      "by", "on", "without", "ignoring", "group_left", "group_right", "and", "or", "unless",
      "offset", "bool", "inf", "nan", "Inf", "NaN",
      // Aggregation operators: "sum by (x) (...)" puts the grouping before the parenthesis.
      "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
      "topk", "quantile"};
  return *k;
}
const std::set<std::string>& LabelListKeywords() {
  static const auto* k =
      new std::set<std::string>{"by", "on", "without", "ignoring", "group_left", "group_right"};
  return *k;
}

}  // namespace

std::set<std::string> SelectedNames(const std::string& expr) {
  std::set<std::string> names;
  const size_t n = expr.size();
  size_t i = 0;
  int brace_depth = 0;     // inside {...} every identifier is a label name
  bool skip_list = false;  // inside by (...) etc.
  while (i < n) {
    const char c = expr[i];
    if (c == '"' || c == '\'' || c == '`') {  // string literal
      const char q = c;
      for (++i; i < n && expr[i] != q; ++i) {
        if (expr[i] == '\\') ++i;
      }
      ++i;
      continue;
    }
    if (c == '[') {  // range or subquery duration: [5m], [$__rate_interval], [1h:5m]
      while (i < n && expr[i] != ']') ++i;
      ++i;
      continue;
    }
    if (c == '{') ++brace_depth;
    if (c == '}') --brace_depth;
    if (c == ')' && skip_list) skip_list = false;
    if (c == '$') {  // Grafana variable
      for (++i; i < n && (IdentChar(expr[i]) || expr[i] == '{' || expr[i] == '}'); ++i) {
      }
      continue;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {  // number or duration (5m, 1e3)
      while (i < n && (IdentChar(expr[i]) || expr[i] == '.')) ++i;
      continue;
    }
    if (!IdentStart(c)) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && IdentChar(expr[j])) ++j;
    const std::string ident = expr.substr(i, j - i);
    size_t k = j;
    while (k < n && std::isspace(static_cast<unsigned char>(expr[k]))) ++k;
    const char next = k < n ? expr[k] : '\0';
    i = j;
    if (LabelListKeywords().count(ident)) {
      if (next == '(') skip_list = true;
      continue;
    }
    if (skip_list || brace_depth > 0 || Keywords().count(ident)) continue;
    if (next == '(') continue;                 // function or aggregation
    if (next == '=' || next == '!') continue;  // label matcher outside braces
    names.insert(ident);
  }
  return names;
}

std::vector<PanelQuery> DashboardQueries(const std::string& dir, const std::string& rate_interval) {
  std::vector<PanelQuery> out;
  for (const std::string& file : ListFiles(dir, ".json")) {
    nlohmann::json d = nlohmann::json::parse(ReadFile(file), nullptr, /*allow_exceptions=*/false);
    if (d.is_discarded()) {
      ADD_FAILURE() << file << " is not valid JSON";
      continue;
    }
    const std::string base = file.substr(file.rfind('/') + 1);
    for (const auto& panel : d.value("panels", nlohmann::json::array())) {
      for (const auto& target : panel.value("targets", nlohmann::json::array())) {
        std::string expr = target.value("expr", "");
        expr = absl::StrReplaceAll(
            expr,
            {{"$__rate_interval", rate_interval}, {"${namespace}", ".*"}, {"$namespace", ".*"}});
        out.push_back({base, panel.value("title", ""), target.value("refId", ""), expr});
      }
    }
  }
  return out;
}

}  // namespace krul::deploy_test
