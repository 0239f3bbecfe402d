# krul_transport: the KV store data plane (UCX one-sided transfers) and its
# in-process fake. Included from common/CMakeLists.txt in full builds only.
find_library(XXHASH_LIB xxhash REQUIRED)

add_library(krul_transport
  ${CMAKE_CURRENT_LIST_DIR}/src/transport.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/fake_transport.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/ucx_transport.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/ucx_transport_messages.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/ucx_transport_transfer.cc
)
target_include_directories(krul_transport PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include
                                          PRIVATE ${CMAKE_CURRENT_LIST_DIR}/src)
target_link_libraries(krul_transport
  PUBLIC krul_engine absl::status absl::statusor absl::time absl::synchronization
  PRIVATE ucx::ucp $<$<TARGET_EXISTS:ucx::ucs>:ucx::ucs> absl::strings absl::str_format absl::flat_hash_map ${XXHASH_LIB}
          Threads::Threads)
