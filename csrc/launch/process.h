#pragma once

// The general process layer of nbdist::launch: start a program in its own process group with
// chosen descriptors, environment and directory, tied to this process's life; signal and reap it.
//
// Every fork happens on one long-lived spawner thread because PR_SET_PDEATHSIG fires when the
// *thread* that forked the child exits, not the process: forking from a short-lived thread would
// kill the child as soon as that thread ended.

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace nbdist::launch {

NBDIST_DEFINE_ERROR(LaunchError, "launch");

// A failed system call inside the launcher (reaches Python as nbdist.LaunchError).
class LaunchSystemError : public SystemError {
 public:
  using SystemError::SystemError;
  const char* subsystem() const noexcept override { return "launch"; }
};

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is searched in env's PATH when it has no '/'
  std::vector<std::string> env;   // "KEY=VALUE" entries; the child's whole environment
  std::string cwd;                // empty: inherit
  // (parent fd, child fd) pairs dup2()ed in the child; every other descriptor is closed at exec.
  std::vector<std::pair<int, int>> fds;
  int death_signal = 9;           // PR_SET_PDEATHSIG signal; 0 = none
  bool new_process_group = true;  // setpgid(0, 0): signals to the group reach grandchildren
};

// Starts the program; returns its pid once exec succeeded. Exec failures (and failures of any
// set-up step in the child) throw LaunchError naming the step and errno.
pid_t spawn(const SpawnSpec& spec);

// The process-wide reaper: a tiny forked (not exec'd) process in its own group, started on first
// use, that learns process-group ids over a pipe and, when this process dies
// (PR_SET_PDEATHSIG=SIGUSR1, taken through a signalfd), SIGKILLs every group still tracked.
// PDEATHSIG alone kills the ranks; the reaper is what takes their grandchildren with them.
void reaper_track(pid_t pgid);
void reaper_untrack(pid_t pgid);
// A duplicate of the write end of the reaper's control pipe (the reaper started if needed),
// registered as a launcher descriptor; the caller closes it (unregister_parent_fd, close). A rank
// forked with it (fork_interpreter's track_fd) tracks its own group before running anything, so
// its children are covered even when this process dies before the rank is attached.
int reaper_control_fd();

// "SIGSEGV" etc.; "signal 42" when the number has no name.
std::string signal_name(int sig);

// Human form of a wait status: "exit code 3", "signal SIGKILL".
std::string describe_wait_status(int status);

// kill(-pgid, sig) that ignores ESRCH (the group is already gone).
void kill_group(pid_t pgid, int sig);

// Opens a pidfd for `pid` (-1 when the kernel has no pidfd_open).
int open_pidfd(pid_t pid);

}  // namespace nbdist::launch
