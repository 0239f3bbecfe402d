// Tests use the project's ChildProcess (krul/base/child_process.h) under
// krul::testing, where the test helpers live.
#ifndef KRUL_TESTS_TEST_SUPPORT_CHILD_PROCESS_H_
#define KRUL_TESTS_TEST_SUPPORT_CHILD_PROCESS_H_

#include "krul/base/child_process.h"

namespace krul::testing {

using ::krul::ChildProcess;
using ::krul::PortFromLine;

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_CHILD_PROCESS_H_
