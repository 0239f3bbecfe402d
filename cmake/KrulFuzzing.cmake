# KRUL_BUILD_FUZZERS=ON makes this build directory a fuzzing build: every
# target in it is compiled with libFuzzer's coverage instrumentation plus
# AddressSanitizer and UndefinedBehaviorSanitizer, and tests/fuzz adds the
# libFuzzer targets. libFuzzer exists only in clang, so such a build needs
# clang (Debian: clang-14 and libclang-rt-14-dev); the product's own build
# keeps its compiler. scripts/build-fuzz.sh configures one in build/fuzz.
if(NOT KRUL_BUILD_FUZZERS)
  return()
endif()

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR
    "KRUL_BUILD_FUZZERS needs clang (libFuzzer); this build uses ${CMAKE_CXX_COMPILER_ID}. "
    "Configure a separate build with CC=clang CXX=clang++, as scripts/build-fuzz.sh does.")
endif()

include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_FLAGS "-fsanitize=fuzzer")
check_cxx_source_compiles([[
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }
]] KRUL_HAVE_LIBFUZZER)
unset(CMAKE_REQUIRED_FLAGS)
if(NOT KRUL_HAVE_LIBFUZZER)
  message(FATAL_ERROR
    "KRUL_BUILD_FUZZERS: clang cannot link -fsanitize=fuzzer (libclang_rt.fuzzer missing; "
    "Debian package libclang-rt-14-dev, installed by scripts/install-deps.sh)")
endif()

# UB aborts instead of printing and going on, so libFuzzer reports it as a
# crash with its input. The libraries get coverage counters
# (fuzzer-no-link); only the fuzz targets link libFuzzer itself (its main).
set(KRUL_FUZZ_SANITIZERS -fsanitize=address,undefined -fno-sanitize-recover=undefined)
# C and C++ only: a fuzzing build has no CUDA (scripts/build-fuzz.sh turns it off).
add_compile_options(-fsanitize=fuzzer-no-link ${KRUL_FUZZ_SANITIZERS} -fno-omit-frame-pointer -g)
add_link_options(${KRUL_FUZZ_SANITIZERS})
