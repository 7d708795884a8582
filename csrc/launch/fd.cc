#include "launch/fd.h"

#include <fcntl.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <mutex>

#include "launch/process.h"

namespace nbdist::launch {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) {
    unregister_parent_fd(fd_);
    ::close(fd_);
  }
  fd_ = fd;
}

Pipe make_pipe(bool nonblocking_read) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw LaunchSystemError("pipe2", errno);
  Pipe p{UniqueFd(fds[0]), UniqueFd(fds[1])};
  if (nonblocking_read) {
    int flags = ::fcntl(fds[0], F_GETFL);
    ::fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
  }
  register_parent_fd(fds[0]);
  register_parent_fd(fds[1]);
  return p;
}

namespace {
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<int>& registry() {
  static std::vector<int> fds;
  return fds;
}
void registry_lock() { registry_mutex().lock(); }
void registry_unlock() { registry_mutex().unlock(); }
// No holder of the registry lock waits for anything: holding it across fork cannot deadlock.
[[maybe_unused]] const int g_registry_atfork =
    ::pthread_atfork(registry_lock, registry_unlock, registry_unlock);
}  // namespace

void register_parent_fd(int fd) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(fd);
}

void unregister_parent_fd(int fd) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& r = registry();
  auto it = std::find(r.begin(), r.end(), fd);
  if (it != r.end()) r.erase(it);
}

std::vector<int> parent_fds_snapshot() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return registry();
}

void forget_parent_fds(const std::vector<int>& fds) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& r = registry();
  r.erase(
      std::remove_if(r.begin(), r.end(),
                     [&fds](int fd) { return std::find(fds.begin(), fds.end(), fd) != fds.end(); }),
      r.end());
}

}  // namespace nbdist::launch
