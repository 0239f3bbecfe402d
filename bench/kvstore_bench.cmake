# krul-bench-kvstore: KV store Put/Get bandwidth over gRPC and UCX (shm, TCP)
# vs memcpy / raw socket / raw RocksDB WriteBatch, and Get latency under
# concurrency. Starts krul-kvstore processes itself.
add_executable(krul-bench-kvstore ${CMAKE_CURRENT_LIST_DIR}/kvstore_bench.cc)
target_link_libraries(krul-bench-kvstore PRIVATE krul_kvstore_client krul_transport krul_bench_loopback_tcp
                                                 RocksDB::rocksdb nlohmann_json::nlohmann_json
                                                 absl::flags absl::flags_parse absl::flags_usage
                                                 absl::str_format absl::strings)
target_compile_definitions(krul-bench-kvstore PRIVATE
  KRUL_KVSTORE_BINARY="$<TARGET_FILE:krul-kvstore>")
add_dependencies(krul-bench-kvstore krul-kvstore)
