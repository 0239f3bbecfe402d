# Benchmarks of the Krul algorithms. One add_executable block per program.

# Estimator overhead on decode: tokens/s with the estimator off vs on.
add_executable(krul-bench-estimator ${CMAKE_CURRENT_LIST_DIR}/estimator_bench.cc)
target_link_libraries(krul-bench-estimator PRIVATE krul_core absl::flags absl::flags_parse
                                                   absl::flags_usage absl::str_format)
