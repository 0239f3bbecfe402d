#include "child_process.h"

#include <regex>

namespace krul::testing {

int PortFromLine(const std::string& line) {
  static const std::regex re(R"(listening on [^ ]*:(\d+))");
  std::smatch m;
  if (!std::regex_search(line, m, re)) return 0;
  return std::stoi(m[1].str());
}

}  // namespace krul::testing
