#include "launch/process.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "launch/fd.h"

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace nbdist::launch {

namespace {

// What a child reports on the error pipe before _exit(127).
struct ChildFailure {
  int stage;
  int err;
};

enum Stage { kSetpgid = 1, kPdeathsig, kParentDied, kDup2, kChdir, kExec };

const char* stage_name(int stage) {
  switch (stage) {
    case kSetpgid:
      return "setpgid";
    case kPdeathsig:
      return "prctl(PR_SET_PDEATHSIG)";
    case kParentDied:
      return "parent exited during start";
    case kDup2:
      return "dup2";
    case kChdir:
      return "chdir";
    case kExec:
      return "execve";
  }
  return "unknown stage";
}

// Async-signal-safe: only raw system calls from here until exec or _exit.
[[noreturn]] void child_fail(int err_fd, int stage, int err) {
  ChildFailure f{stage, err};
  ssize_t ignored = ::write(err_fd, &f, sizeof f);
  (void)ignored;
  ::_exit(127);
}

void reset_signals() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) ::sigaction(s, &sa, nullptr);  // SIGKILL/SIGSTOP just fail
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

std::string find_in_path(const std::string& prog, const std::vector<std::string>& env) {
  if (prog.find('/') != std::string::npos) return prog;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& kv : env)
    if (kv.rfind("PATH=", 0) == 0) path = kv.substr(5);
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    std::string candidate = (dir.empty() ? "." : dir) + "/" + prog;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  throw LaunchError(ErrorKind::kInvalidInput,
                    "cannot start '" + prog + "': not found in PATH (" + path + ")");
}

pid_t do_spawn(const SpawnSpec& spec) {
  if (spec.argv.empty()) throw LaunchError(ErrorKind::kInvalidInput, "spawn: empty argv");
  // Everything the child touches is prepared before fork: after fork only async-signal-safe calls.
  std::string exe = find_in_path(spec.argv[0], spec.env);
  std::vector<char*> argv, envp;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const char* cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
  // Sources of dup2 may collide with targets (a source numbered 1 moved to 2 before 1 is read);
  // first move every source above the highest target.
  int max_target = 2;
  for (auto& p : spec.fds) max_target = std::max(max_target, p.second);
  Pipe err = make_pipe(false);
  int err_w = err.write.get();
  pid_t parent = ::getpid();
  int death_signal = spec.death_signal;
  bool new_group = spec.new_process_group;
  std::vector<std::pair<int, int>> fds = spec.fds;
  std::vector<int> moved(fds.size(), -1);

  pid_t pid = ::fork();
  if (pid < 0) throw LaunchSystemError("fork", errno);
  if (pid == 0) {
    if (new_group && ::setpgid(0, 0) != 0) child_fail(err_w, kSetpgid, errno);
    if (death_signal != 0) {
      if (::prctl(PR_SET_PDEATHSIG, death_signal) != 0) child_fail(err_w, kPdeathsig, errno);
      // The parent may have died between fork and prctl: then nobody would ever kill us.
      if (::getppid() != parent) child_fail(err_w, kParentDied, 0);
    }
    reset_signals();
    for (size_t i = 0; i < fds.size(); ++i) {
      moved[i] = ::fcntl(fds[i].first, F_DUPFD_CLOEXEC, max_target + 1);
      if (moved[i] < 0) child_fail(err_w, kDup2, errno);
    }
    for (size_t i = 0; i < fds.size(); ++i)
      if (::dup2(moved[i], fds[i].second) < 0) child_fail(err_w, kDup2, errno);
    // Descriptors the parent created without O_CLOEXEC must not leak into the program either.
    ::syscall(SYS_close_range, max_target + 1, ~0U, CLOSE_RANGE_CLOEXEC);
    if (cwd && ::chdir(cwd) != 0) child_fail(err_w, kChdir, errno);
    ::execve(exe.c_str(), argv.data(), envp.data());
    child_fail(err_w, kExec, errno);
  }
  if (new_group) ::setpgid(pid, pid);  // both sides, so the group exists when fork returns
  err.write.reset();
  ChildFailure f{};
  ssize_t n;
  do {
    n = ::read(err.read.get(), &f, sizeof f);
  } while (n < 0 && errno == EINTR);
  if (n == 0) return pid;  // EOF: the pipe closed at exec
  int status;
  ::waitpid(pid, &status, 0);
  std::string what = "cannot start '" + spec.argv[0] + "': " + stage_name(f.stage) + " failed";
  if (f.stage == kParentDied) throw LaunchError(what);
  if (f.stage == kChdir) what += " (directory '" + spec.cwd + "')";
  throw LaunchSystemError(what, f.err);
}

// Reads every track (+pgid) / untrack (-pgid) message already in the control pipe into groups.
// Returns false at EOF (the launcher's end is closed: it died).
bool reaper_read(pid_t* groups, int& ngroups, int max_groups, bool drain) {
  for (;;) {
    int32_t v;
    ssize_t n = ::read(0, &v, sizeof v);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return false;
    if (n != sizeof v) return true;  // EAGAIN while draining (4-byte writes arrive whole)
    if (v > 0) {
      // Reuse the slots of finished groups: a long kernel session starts far more than
      // max_groups ranks over its life.
      int i = 0;
      while (i < ngroups && groups[i] != 0) ++i;
      if (i < max_groups) {
        groups[i] = v;
        if (i == ngroups) ++ngroups;
      }
    } else if (v < 0) {
      for (int i = 0; i < ngroups; ++i)
        if (groups[i] == -v) groups[i] = 0;
    }
    if (!drain) return true;
  }
}

[[noreturn]] void reaper_main(int control, pid_t parent) {
  // Own group: a Ctrl-C sent to the launcher's group must not take the reaper down first.
  ::setpgid(0, 0);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  // The launcher may die before the death signal is armed. Its ranks die by their own
  // PDEATHSIG, but their children only by our kill: so the groups it already sent are still
  // read from the pipe and killed, never skipped.
  bool orphaned = ::prctl(PR_SET_PDEATHSIG, SIGUSR1) != 0 || ::getppid() != parent;
  // Keep nothing of the parent's open (listening sockets, other jobs' pipes) but the control pipe.
  if (::dup2(control, 0) < 0) ::_exit(1);
  if (::syscall(SYS_close_range, 1, ~0U, 0) != 0)
    for (int fd = 1; fd < 4096; ++fd) ::close(fd);
  int sfd = ::signalfd(-1, &set, SFD_CLOEXEC);
  constexpr int kMaxGroups = 4096;
  static pid_t groups[kMaxGroups];
  int ngroups = 0;
  struct pollfd pfd[2] = {{0, POLLIN, 0}, {sfd, POLLIN, 0}};
  bool parent_gone = orphaned;
  while (!parent_gone) {
    int r = ::poll(pfd, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) ::_exit(1);
    parent_gone = (pfd[1].revents & POLLIN) != 0;
    // EOF: the launcher's end closed, which only its death does. It can arrive before the
    // death signal, so it must kill too.
    if (!parent_gone && pfd[0].revents && !reaper_read(groups, ngroups, kMaxGroups, false))
      parent_gone = true;
  }
  // Groups the launcher sent just before it died (a rank started a moment earlier) may still
  // wait in the pipe next to the death signal: read them all first. Non-blocking: a process
  // forked by user code in the launcher could hold the write end open forever.
  ::fcntl(0, F_SETFL, ::fcntl(0, F_GETFL) | O_NONBLOCK);
  reaper_read(groups, ngroups, kMaxGroups, true);
  for (int i = 0; i < ngroups; ++i)
    if (groups[i] > 0) ::kill(-groups[i], SIGKILL);
  ::_exit(0);
}

pid_t do_spawn_reaper(int control) {
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw LaunchSystemError("fork (reaper)", errno);
  if (pid == 0) reaper_main(control, parent);
  return pid;
}

class Spawner;
class Reaper;

// The process-wide singletons (the spawner thread, the reaper) belong to one process. A child
// forked from it (a `fork` rank that starts a nested launch, os.fork in user code) inherits the
// objects but neither the spawner's thread (a spawn would wait for it forever) nor the reaper (not
// its child; its mutex may even be held by a thread that does not exist there). The fork child
// handler forgets them: they are leaked there, never touched, and the child makes its own on first
// use. g_singletons_mu (held across fork, see the atfork handlers) only guards their creation.
std::mutex g_singletons_mu;
std::atomic<Spawner*> g_spawner{nullptr};
std::atomic<Reaper*> g_reaper{nullptr};

template <class T>
T& singleton(std::atomic<T*>& slot) {
  T* p = slot.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  std::lock_guard<std::mutex> lock(g_singletons_mu);
  p = slot.load(std::memory_order_relaxed);
  if (p == nullptr) {
    p = new T();  // never deleted: a static destructor could run while a fork is in progress
    slot.store(p, std::memory_order_release);
  }
  return *p;
}

// Creating a singleton never forks, so holding the mutex across fork cannot deadlock.
void singletons_prepare() { g_singletons_mu.lock(); }
void singletons_parent() { g_singletons_mu.unlock(); }
void singletons_child() {
  g_spawner.store(nullptr, std::memory_order_relaxed);
  g_reaper.store(nullptr, std::memory_order_relaxed);
  g_singletons_mu.unlock();
}
[[maybe_unused]] const int g_singletons_atfork =
    ::pthread_atfork(singletons_prepare, singletons_parent, singletons_child);

// The one thread that forks. It lives as long as the process (never joined: a static destructor
// joining it at exit could deadlock with a fork in progress).
class Spawner {
 public:
  static Spawner& instance() { return singleton(g_spawner); }

  template <class F>
  auto run(F&& f) -> decltype(f()) {
    using R = decltype(f());
    std::packaged_task<R()> task(std::forward<F>(f));
    auto fut = task.get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back([&task] { task(); });
    }
    cv_.notify_one();
    return fut.get();
  }

 private:
  friend Spawner& singleton<Spawner>(std::atomic<Spawner*>&);
  Spawner() {
    std::thread([this] { loop(); }).detach();
  }

  void loop() {
    // Signals belong to the interpreter's main thread, never to the spawner.
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
};

}  // namespace

pid_t spawn(const SpawnSpec& spec) {
  return Spawner::instance().run([&spec] { return do_spawn(spec); });
}

namespace {

class Reaper {
 public:
  static Reaper& instance() { return singleton(g_reaper); }

  void track(pid_t pgid) {
    std::lock_guard<std::mutex> lock(mu_);
    ensure_running();
    groups_.push_back(pgid);
    send(pgid);
  }

  int control_fd() {
    std::lock_guard<std::mutex> lock(mu_);
    ensure_running();
    // A duplicate: the reaper may be restarted (and write_ replaced) while the caller forks.
    int fd = ::fcntl(write_.get(), F_DUPFD_CLOEXEC, 3);
    if (fd < 0) throw LaunchSystemError("fcntl(F_DUPFD_CLOEXEC) of the reaper pipe", errno);
    register_parent_fd(fd);
    return fd;
  }

  void untrack(pid_t pgid) {
    std::lock_guard<std::mutex> lock(mu_);
    groups_.erase(std::remove(groups_.begin(), groups_.end(), pgid), groups_.end());
    if (write_.valid()) send(-pgid);
  }

 private:
  void ensure_running() {
    int st;
    if (pid_ > 0 && ::waitpid(pid_, &st, WNOHANG) == 0) return;
    // First use, or someone killed the reaper: start one and tell it about every live group.
    Pipe control = make_pipe(false);
    int read_fd = control.read.get();
    pid_ = Spawner::instance().run([read_fd] { return do_spawn_reaper(read_fd); });
    write_ = std::move(control.write);
    for (pid_t g : groups_) send(g);
  }

  void send(int32_t v) {
    ssize_t ignored = ::write(write_.get(), &v, sizeof v);
    (void)ignored;
  }

  std::mutex mu_;
  pid_t pid_ = 0;
  UniqueFd write_;
  std::vector<pid_t> groups_;
};

}  // namespace

void reaper_track(pid_t pgid) { Reaper::instance().track(pgid); }
int reaper_control_fd() { return Reaper::instance().control_fd(); }
void reaper_untrack(pid_t pgid) { Reaper::instance().untrack(pgid); }

std::string signal_name(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
      {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
      {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
      {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGCHLD, "SIGCHLD"},
      {SIGCONT, "SIGCONT"}, {SIGSTOP, "SIGSTOP"}, {SIGTSTP, "SIGTSTP"}, {SIGXCPU, "SIGXCPU"},
      {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
  };
  for (const auto& [n, name] : kNames)
    if (n == sig) return name;
  return "signal " + std::to_string(sig);
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + signal_name(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

void kill_group(pid_t pgid, int sig) {
  if (pgid <= 0) return;
  // ESRCH: the process has not made its group yet (or never does); signal it directly.
  if (::kill(-pgid, sig) != 0 && errno == ESRCH) ::kill(pgid, sig);
}

int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
#else
  return -1;
#endif
}

}  // namespace nbdist::launch
