#pragma once

// The nbdist exception hierarchy (recoverable errors). Broken invariants use NBDIST_CHECK, which
// also throws, because a library must never abort the notebook kernel that loaded it.
//
// Every error carries a kind, which the bindings map to the Python builtin it also derives from:
//   kInvalidInput -> ValueError, kTimeout -> TimeoutError, kFailure -> RuntimeError.
// Subsystems derive their own class so that Python sees nbdist.LaunchError, nbdist.arc.ArcError...

#include <stdexcept>
#include <string>

namespace nbdist {

enum class ErrorKind {
  kFailure,       // something that should have worked did not (a syscall, a peer, a file)
  kInvalidInput,  // the caller passed something wrong; the message names what and where
  kTimeout,       // a deadline passed
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  explicit Error(const std::string& message) : Error(ErrorKind::kFailure, message) {}

  ErrorKind kind() const noexcept { return kind_; }
  // Which Python class family this error belongs to ("nbdist", "launch", "arc", "ddp", "monitor").
  virtual const char* subsystem() const noexcept { return "nbdist"; }

 private:
  ErrorKind kind_;
};

// An error raised by a failed system call: the message ends with strerror(errno) and the errno.
class SystemError : public Error {
 public:
  SystemError(const std::string& what, int err);
  int error_number() const noexcept { return errno_; }

 private:
  int errno_;
};

// Defines a subsystem error class, e.g. NBDIST_DEFINE_ERROR(LaunchError, "launch").
#define NBDIST_DEFINE_ERROR(Name, subsystem_name)                            \
  class Name : public ::nbdist::Error {                                      \
   public:                                                                   \
    using ::nbdist::Error::Error;                                            \
    const char* subsystem() const noexcept override { return subsystem_name; } \
  }

[[noreturn]] void check_failed(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace nbdist

// Invariant check: a failure is a bug in nbdist, reported with file and line rather than a crash.
#define NBDIST_CHECK(cond, msg)                                      \
  do {                                                               \
    if (!(cond)) ::nbdist::check_failed(#cond, __FILE__, __LINE__, (msg)); \
  } while (0)
