#pragma once

// RAII file descriptors and the process-wide registry of descriptors that fork()ed children
// (fork start method, zygote-less Python forks) must close: without it a rank forked without exec
// would keep another rank's pipe ends or a reaper's control pipe alive.

#include <unistd.h>

#include <utility>
#include <vector>

namespace nbdist::launch {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

// A pipe whose two ends are close-on-exec; `nonblocking_read` makes the read end O_NONBLOCK.
struct Pipe {
  UniqueFd read;
  UniqueFd write;
};
Pipe make_pipe(bool nonblocking_read);

// Descriptors owned by a launcher in this process. Children forked without exec close them all
// (except the ones they were handed) so that pipes reach EOF and sockets are not kept bound.
// The registry's lock is held across every fork (pthread_atfork), so that a child never inherits
// it locked by a thread that does not exist there.
void register_parent_fd(int fd);
void unregister_parent_fd(int fd);
std::vector<int> parent_fds_snapshot();
// In a forked child that closed `fds`: drops them from its registry, whose numbers the child's
// own files may take next (a nested launch must not close those in its ranks).
void forget_parent_fds(const std::vector<int>& fds);

}  // namespace nbdist::launch
