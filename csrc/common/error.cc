#include "common/error.h"

#include <cstring>

namespace nbdist {

SystemError::SystemError(const std::string& what, int err)
    : Error(ErrorKind::kFailure,
            what + ": " + std::strerror(err) + " (errno " + std::to_string(err) + ")"),
      errno_(err) {}

void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  throw Error(ErrorKind::kFailure, std::string("internal error (please report): ") + msg +
                                       " [" + expr + " failed at " + file + ":" +
                                       std::to_string(line) + "]");
}

}  // namespace nbdist
