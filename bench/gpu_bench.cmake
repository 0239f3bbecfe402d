# GPU benchmarks (CUDA builds only): included from bench/CMakeLists.txt when
# KRUL_CUDA_ENABLED. Run by scripts/gpu-check.sh on a GPU machine.

# Restore TTFT of every mode on the GPU (LLaMA-7B shape by default), device
# peaks, prefill / copy rates and the estimator's overhead on decode.
add_executable(krul-bench-restore-gpu ${CMAKE_CURRENT_LIST_DIR}/gpu_restore_bench.cc)
target_link_libraries(krul-bench-restore-gpu PRIVATE
  krul_cuda krul_core krul_restore krul_bench_restore_common CUDA::cublas
  absl::flags absl::flags_parse absl::flags_usage absl::str_format absl::strings)
