# krul-bench-transport: UCX data-plane bandwidth vs memcpy and raw TCP.
add_executable(krul-bench-transport ${CMAKE_CURRENT_LIST_DIR}/transport_bench.cc)
target_link_libraries(krul-bench-transport PRIVATE krul_transport krul_bench_loopback_tcp absl::flags absl::flags_parse
                                                   absl::flags_usage absl::str_format
                                                   absl::strings)
