# KRUL_SANITIZE=address builds every C/C++ target with AddressSanitizer (and
# LeakSanitizer, part of it on Linux), for the soak and the test suite under
# ASan (tests/stress/soak.sh, tests/stress/README.md). Use its own build
# directory, e.g.
#   cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKRUL_SANITIZE=address
# CUDA code keeps its flags (nvcc does not take -fsanitize). A fuzzing build
# (KRUL_BUILD_FUZZERS) has its own sanitizers and ignores this.
set(KRUL_SANITIZE "" CACHE STRING "Sanitizer for every C/C++ target: empty (none) or address")
set_property(CACHE KRUL_SANITIZE PROPERTY STRINGS "" address)
if(KRUL_SANITIZE STREQUAL "" OR KRUL_BUILD_FUZZERS)
  return()
endif()
if(NOT KRUL_SANITIZE STREQUAL "address")
  message(FATAL_ERROR "KRUL_SANITIZE=${KRUL_SANITIZE}: only \"address\" is supported")
endif()
add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-fsanitize=address>
                    $<$<COMPILE_LANGUAGE:CXX,C>:-fno-omit-frame-pointer>)
add_link_options(-fsanitize=address)
