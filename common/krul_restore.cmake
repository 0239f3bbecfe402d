# krul_restore: the restore scheduler (cost model, planner, modes, executor)
# and the in-process KV source. Included from common/CMakeLists.txt after
# krul_core.cmake, whose compressor and selector it builds on.
if(TARGET krul_core)
  add_library(krul_restore
    ${CMAKE_CURRENT_LIST_DIR}/src/cost_model.cc
    ${CMAKE_CURRENT_LIST_DIR}/src/restore_plan.cc
    ${CMAKE_CURRENT_LIST_DIR}/src/restore_mode.cc
    ${CMAKE_CURRENT_LIST_DIR}/src/kv_source.cc
    ${CMAKE_CURRENT_LIST_DIR}/src/restorer.cc
  )
  target_include_directories(krul_restore PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include)
  target_link_libraries(krul_restore PUBLIC krul_core krul_engine absl::status absl::statusor
                                            absl::synchronization absl::flat_hash_map
                                            absl::inlined_vector
                                     PRIVATE absl::strings)
else()
  message(STATUS "krul_restore: krul_core is missing, restore scheduler not built")
endif()
