// Worker integration tests run krul-worker and krul-kvstore through the
// shared test_support ChildProcess; this header adds the parsing of the
// port from their "listening on" lines.
#ifndef KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_
#define KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_

#include <string>

#include "test_support/child_process.h"

namespace krul::testing {

// The port at the end of "... listening on HOST:PORT" (0 if none).
int PortFromLine(const std::string& line);

}  // namespace krul::testing

#endif  // KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_
