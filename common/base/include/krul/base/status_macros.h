// Early returns for absl::Status and absl::StatusOr, so a function that calls
// several fallible steps reads as the steps:
//
//   KRUL_RETURN_IF_ERROR(file.Read(&header, sizeof(header), "header"));
//   KRUL_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(path));
//
// Both return the failed status unchanged (code and message) from the
// enclosing function, which must return absl::Status or absl::StatusOr<T>.
// Neither adds context; wrap the status yourself where the caller needs it.
#ifndef KRUL_BASE_STATUS_MACROS_H_
#define KRUL_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) once; returns it when it is not OK.
#define KRUL_RETURN_IF_ERROR(expr)                                                   \
  do {                                                                               \
    if (absl::Status krul_status_ = (expr); !krul_status_.ok()) return krul_status_; \
  } while (0)

// Evaluates the expression after `lhs` (an absl::StatusOr<T>; it may contain
// commas) once; returns its status when it is not OK, otherwise does
// `lhs = std::move(value)`; `lhs` may declare a variable ("auto x"). Expands
// to more than one statement: do not use it as the body of an unbraced if or
// loop.
#define KRUL_ASSIGN_OR_RETURN(lhs, ...) \
  KRUL_ASSIGN_OR_RETURN_IMPL_(KRUL_STATUS_CONCAT_(krul_statusor_, __LINE__), lhs, __VA_ARGS__)

#define KRUL_STATUS_CONCAT_INNER_(a, b) a##b
#define KRUL_STATUS_CONCAT_(a, b) KRUL_STATUS_CONCAT_INNER_(a, b)
#define KRUL_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, ...) \
  auto tmp = (__VA_ARGS__);                        \
  if (!tmp.ok()) return std::move(tmp).status();   \
  lhs = std::move(*tmp)

#endif  // KRUL_BASE_STATUS_MACROS_H_
