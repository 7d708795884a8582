#pragma once

// Forking the running interpreter (the `fork` start method and the zygote). CPython must run
// PyOS_BeforeFork / PyOS_AfterFork_* around fork() in the forking thread, so this cannot happen on
// the C++ spawner thread: Python calls it from its own long-lived fork thread, with the GIL held.

#include <sys/types.h>

#include <utility>
#include <vector>

namespace nbdist::launch {

// Forks; in the child (return 0): own process group, PR_SET_PDEATHSIG(death_signal) re-checked
// against the parent's pid, `fds` dup2()ed (parent fd -> child fd), and every launcher-owned
// descriptor plus `close_fds` closed except the dup2 sources listed in `keep`. Returns the pid in
// the parent. `track_fd` (>= 0): a reaper control pipe the child writes its own pid into first,
// before any of its code can start a process (see reaper_control_fd). Throws SystemError when
// fork fails.
pid_t fork_interpreter(const std::vector<std::pair<int, int>>& fds, const std::vector<int>& keep,
                       const std::vector<int>& close_fds, int death_signal, int track_fd = -1);

}  // namespace nbdist::launch
