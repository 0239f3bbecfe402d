// What the deployment tests need to know about PromQL and the Grafana dashboards: the metric
// names an expression reads, and the queries of every dashboard panel.
#ifndef KRUL_TESTS_DEPLOY_PROMQL_NAMES_H_
#define KRUL_TESTS_DEPLOY_PROMQL_NAMES_H_

#include <set>
#include <string>
#include <vector>

namespace krul::deploy_test {

// Names of the series an expression selects (metric names and recording-rule names), found
// by a small tokenizer: identifiers outside strings that are not functions, aggregations,
// keywords, aggregation operators, label names (in matchers and in by/on/without/ignoring/group_*
// lists) or Grafana variables ($x). Good for the expressions of this repository, not a full parser.
std::set<std::string> SelectedNames(const std::string& expr);

struct PanelQuery {
  std::string dashboard;  // file name
  std::string panel;      // panel title
  std::string ref_id;
  std::string expr;  // with the Grafana variables replaced
};

// The queries of every panel of every dashboard JSON in `dir`. $__rate_interval becomes
// `rate_interval`, $namespace / ${namespace} become `.*` (all namespaces). Fails the calling
// test (ADD_FAILURE) on a file that does not parse.
std::vector<PanelQuery> DashboardQueries(const std::string& dir, const std::string& rate_interval);

}  // namespace krul::deploy_test

#endif  // KRUL_TESTS_DEPLOY_PROMQL_NAMES_H_
