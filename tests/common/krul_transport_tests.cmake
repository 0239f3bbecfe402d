# Tests of the KV store data plane (UCX transport and its fake).
krul_add_test(krul_transport_tests
  SOURCES
    common/transport_test.cc
    common/transport_process_test.cc
  LIBS
    krul_transport
)
# White-box checks forge descriptors with the internal wire format.
target_include_directories(krul_transport_tests PRIVATE ${PROJECT_SOURCE_DIR}/common/src)

# The server half of the cross-process tests.
add_executable(krul_transport_test_peer common/transport_test_peer.cc)
target_link_libraries(krul_transport_test_peer PRIVATE krul_transport absl::strings)
# The shared byte pattern (common/transport_test_pattern.h) lives under tests/.
target_include_directories(krul_transport_test_peer PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_dependencies(krul_transport_tests krul_transport_test_peer)
target_compile_definitions(krul_transport_tests PRIVATE
  KRUL_TRANSPORT_TEST_PEER="$<TARGET_FILE:krul_transport_test_peer>")
