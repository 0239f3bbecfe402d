# Compiler flags shared by every Krul target.
include(CheckCXXCompilerFlag)

# Host-compiler warnings only: nvcc does not take -Wall directly.
add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-Wall> $<$<COMPILE_LANGUAGE:CXX,C>:-Wextra>
                    $<$<COMPILE_LANGUAGE:CXX,C>:-Wno-unused-parameter>
                    $<$<COMPILE_LANGUAGE:CXX,C>:-Wshadow>)
# Warnings as errors where a build is a check (scripts/test.sh, hence CI), not
# where a user builds to run: a newer compiler's new warning must not stop the demo.
option(KRUL_WERROR "Treat compiler warnings as errors (C/C++)" OFF)
if(KRUL_WERROR)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-Werror>)
endif()
# `#pragma omp simd` marks the vector loops of the engine and the estimator;
# -fopenmp-simd honours it without the OpenMP runtime. Everywhere, so code
# that includes those loops (the op tests) compiles them the same way.
check_cxx_compiler_flag(-fopenmp-simd KRUL_HAS_OPENMP_SIMD)
if(KRUL_HAS_OPENMP_SIMD)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-fopenmp-simd>)
endif()
if(KRUL_NATIVE_ARCH)
  check_cxx_compiler_flag(-march=native KRUL_HAS_MARCH_NATIVE)
  if(KRUL_HAS_MARCH_NATIVE)
    add_compile_options($<$<COMPILE_LANGUAGE:CXX,C>:-march=native>)
  endif()
endif()

# ccache, when installed, makes CI rebuilds on a 2-core machine cheap.
find_program(KRUL_CCACHE ccache)
if(KRUL_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_C_COMPILER_LAUNCHER ${KRUL_CCACHE})
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KRUL_CCACHE})
endif()
