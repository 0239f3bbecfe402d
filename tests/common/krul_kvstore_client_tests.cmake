# Tests of the KV block codec, manifests and the kvstore client.
krul_add_test(krul_kv_codec_tests
  SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/kv_block_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/manifest_test.cc
  LIBS
    krul_kv_codec
)
