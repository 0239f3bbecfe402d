# KV block codec, manifests and the kvstore client (included from
# common/CMakeLists.txt in full builds only).

find_library(XXHASH_LIB xxhash REQUIRED)

# krul_kv_codec: block header + checksum, manifest validation and framing.
# Used by both the store (services/kvstore) and the client.
add_library(krul_kv_codec
  ${CMAKE_CURRENT_SOURCE_DIR}/src/kv_block.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/manifest.cc
)
target_include_directories(krul_kv_codec PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
target_link_libraries(krul_kv_codec PUBLIC krul_engine krul_proto absl::status absl::statusor
                                           absl::strings ${XXHASH_LIB})

# krul_kvstore_client: sharded, replicated, verifying client of krul-kvstore
# (gRPC control plane; gRPC-inline or UCX data plane).
add_library(krul_kvstore_client
  ${CMAKE_CURRENT_SOURCE_DIR}/src/kvstore_client.cc
  ${CMAKE_CURRENT_SOURCE_DIR}/src/kvstore_client_ucx.cc
)
target_include_directories(krul_kvstore_client PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
target_link_libraries(krul_kvstore_client PUBLIC krul_kv_codec krul_proto gRPC::grpc++
                                                 krul_engine absl::synchronization absl::time
                                                 absl::flat_hash_map ${XXHASH_LIB})
