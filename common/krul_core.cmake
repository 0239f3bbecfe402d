# krul_core: the Krul algorithms that run beside the engine: the similarity
# estimator, the selector (and its plan format) and the KV compressor.
# Depends on krul_engine and Abseil only, so engine-only builds have it too.
add_library(krul_core
  ${CMAKE_CURRENT_LIST_DIR}/src/attention_distance.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/similarity_estimator.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/compression_plan.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/selector.cc
  ${CMAKE_CURRENT_LIST_DIR}/src/compressor.cc
)
target_link_libraries(krul_core PUBLIC krul_engine absl::synchronization
                                PRIVATE absl::strings absl::str_format)
