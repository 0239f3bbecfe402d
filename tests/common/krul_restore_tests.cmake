# Tests of the restore scheduler: cost model, planner (against brute force),
# KV source, executor (against the uncompressed cache and full recompute).
# Included from tests/CMakeLists.txt.
if(TARGET krul_restore)
  krul_add_test(krul_restore_tests SOURCES
    ${CMAKE_CURRENT_LIST_DIR}/restore_plan_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/cost_model_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/kv_source_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/restorer_test.cc
    LIBS krul_restore
  )
endif()
