# Benchmarks of the Krul algorithms. One add_executable block per program.

# Estimator overhead on decode: tokens/s with the estimator off vs on.
add_executable(krul-bench-estimator ${CMAKE_CURRENT_LIST_DIR}/estimator_bench.cc)
target_link_libraries(krul-bench-estimator PRIVATE krul_core krul_bench_util absl::flags absl::flags_parse
                                                   absl::flags_usage absl::str_format)

# Restore TTFT of every mode (recompute, load, cake, minicache, krul-fixed,
# krul) over history lengths, storage per mode and scheduler efficiency; and
# the quality of each mode's stored KV on real conversations (which needs
# nlohmann_json to read the conversation files).
if(TARGET krul_restore)
  # Where the restore bench stores KV: the real kvstore (in-process server,
  # gRPC control + UCX data, read by the worker's KvSource) when the services
  # are built; with KRUL_ENGINE_ONLY only the in-process store exists.
  add_library(krul_bench_restore_store STATIC ${CMAKE_CURRENT_LIST_DIR}/restore_bench_store.cc)
  target_include_directories(krul_bench_restore_store PUBLIC ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(krul_bench_restore_store PUBLIC krul_restore absl::statusor absl::time)
  if(TARGET krul_worker_lib AND TARGET krul_kvstore_lib AND TARGET krul_transport)
    target_link_libraries(krul_bench_restore_store PRIVATE krul_worker_lib krul_kvstore_lib
                                                           krul_transport)
    target_compile_definitions(krul_bench_restore_store PRIVATE KRUL_BENCH_WITH_KVSTORE=1)
  endif()
  add_executable(krul-bench-restore ${CMAKE_CURRENT_LIST_DIR}/restore_bench.cc)
  target_link_libraries(krul-bench-restore PRIVATE krul_restore krul_bench_restore_common
                                                   krul_bench_restore_store absl::flags
                                                   absl::flags_parse absl::flags_usage
                                                   absl::str_format absl::strings)
  if(TARGET nlohmann_json::nlohmann_json)
    # Conversation files and next-token metrics, shared by the two quality
    # programs.
    add_library(krul_bench_conversations STATIC ${CMAKE_CURRENT_LIST_DIR}/conversations.cc)
    target_include_directories(krul_bench_conversations PUBLIC ${CMAKE_CURRENT_LIST_DIR})
    target_link_libraries(krul_bench_conversations PUBLIC krul_bench_util nlohmann_json::nlohmann_json
                                                          absl::statusor absl::strings)
    add_executable(krul-bench-quality ${CMAKE_CURRENT_LIST_DIR}/quality_bench.cc)
    target_link_libraries(krul-bench-quality PRIVATE krul_restore krul_bench_conversations
                                                     absl::flags absl::flags_parse
                                                     absl::flags_usage absl::strings)
    # Does a per-conversation choice of pairs exist to be found? Every pair's
    # measured cost per conversation, and selections by four scores.
    add_executable(krul-bench-pair-oracle ${CMAKE_CURRENT_LIST_DIR}/pair_oracle_bench.cc)
    target_link_libraries(krul-bench-pair-oracle PRIVATE krul_restore krul_bench_conversations
                                                         absl::flags absl::flags_parse
                                                         absl::flags_usage absl::strings)
  endif()
endif()
