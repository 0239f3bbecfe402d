# Tests of the Krul core algorithms (estimator, selector, compressor).
krul_add_test(krul_core_tests SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/similarity_estimator_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/selector_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/compressor_test.cc
  LIBS krul_core)
