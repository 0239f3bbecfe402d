# Finds the product's dependencies. All of them are Debian 12 packages that
# scripts/install-deps.sh installs. With KRUL_ENGINE_ONLY=ON only Abseil (and,
# when present, GoogleTest and Google Benchmark) are needed, because the GPU
# machine lacks gRPC, RocksDB, UCX and prometheus-cpp.
find_package(Threads REQUIRED)
find_package(absl REQUIRED)

find_package(GTest QUIET)
set(KRUL_HAVE_GTEST ${GTest_FOUND})
find_package(benchmark QUIET)
find_package(nlohmann_json QUIET)

if(NOT KRUL_ENGINE_ONLY)
  find_package(Protobuf REQUIRED)
  find_package(gRPC CONFIG REQUIRED)
  find_package(RocksDB CONFIG REQUIRED)
  find_package(ucx CONFIG QUIET)
  if(NOT TARGET ucx::ucp)
    find_package(PkgConfig REQUIRED)
    pkg_check_modules(UCX REQUIRED IMPORTED_TARGET ucx)
    add_library(ucx::ucp ALIAS PkgConfig::UCX)
  endif()
  find_package(prometheus-cpp CONFIG REQUIRED)
  find_package(nlohmann_json REQUIRED)
  if(NOT GTest_FOUND)
    message(FATAL_ERROR "GoogleTest not found: run scripts/install-deps.sh")
  endif()
endif()
