# Tests of the KV block codec, manifests and the kvstore client.
krul_add_test(krul_kv_codec_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/kv_block_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/manifest_test.cc
  LIBS
    krul_kv_codec
)

# The kvstore client without a server (options, sharding, argument checks,
# unreachable shards); end-to-end tests live in tests/services/kvstore.
krul_add_test(krul_kvstore_client_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/kvstore_client_test.cc
  LIBS
    krul_kvstore_client
)
