#include "launch/pyfork.h"

#include <Python.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/error.h"
#include "launch/fd.h"
#include "launch/process.h"

namespace nbdist::launch {

pid_t fork_interpreter(const std::vector<std::pair<int, int>>& fds, const std::vector<int>& keep,
                       const std::vector<int>& close_fds, int death_signal, int track_fd) {
  // Taken before fork: another thread could hold the registry lock at the moment of fork.
  std::vector<int> to_close = parent_fds_snapshot();
  to_close.insert(to_close.end(), close_fds.begin(), close_fds.end());
  int max_target = 2;
  for (auto& p : fds) max_target = std::max(max_target, p.second);
  pid_t parent = ::getpid();

  PyOS_BeforeFork();
  pid_t pid = ::fork();
  int saved = errno;
  if (pid != 0) {
    PyOS_AfterFork_Parent();
    if (pid < 0) throw LaunchSystemError("fork", saved);
    // The child's own setpgid may not have run yet when a teardown signals its group: setting
    // it from both sides (as shells do) closes that window.
    ::setpgid(pid, pid);
    return pid;
  }
  PyOS_AfterFork_Child();
  ::setpgid(0, 0);
  if (death_signal != 0) {
    ::prctl(PR_SET_PDEATHSIG, death_signal);
    if (::getppid() != parent) ::_exit(1);  // orphaned before the death signal was armed
  }
  if (track_fd >= 0) {
    // One 4-byte write is atomic on a pipe; the launcher's own track message may follow (a
    // duplicate the reaper tolerates).
    int32_t self = static_cast<int32_t>(::getpid());
    ssize_t ignored = ::write(track_fd, &self, sizeof self);
    (void)ignored;
  }
  std::vector<int> moved;
  for (auto& p : fds) moved.push_back(::fcntl(p.first, F_DUPFD_CLOEXEC, max_target + 1));
  for (size_t i = 0; i < fds.size(); ++i)
    if (moved[i] >= 0) ::dup2(moved[i], fds[i].second);
  for (int fd : moved)
    if (fd >= 0) ::close(fd);
  std::vector<int> closed;
  for (int fd : to_close) {
    bool is_target = false;
    for (auto& p : fds) is_target |= p.second == fd;
    if (!is_target && std::find(keep.begin(), keep.end(), fd) == keep.end()) {
      ::close(fd);
      closed.push_back(fd);
    }
  }
  // The child's registry still lists what it just closed; its own descriptors will reuse those
  // numbers, and a launch it starts (nested in this rank) must not close them in its ranks.
  forget_parent_fds(closed);
  return 0;
}

}  // namespace nbdist::launch
