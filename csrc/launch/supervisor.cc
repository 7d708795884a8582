#include "launch/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace nbdist::launch {

namespace {

enum Kind : uint64_t { kStdout = 1, kStderr = 2, kResult = 3, kStatus = 4, kPidfd = 5 };
constexpr uint64_t kWakeTag = ~uint64_t{0};
constexpr size_t kMaxDump = 1 << 20;

// A rank's outcome (python/nbdist/_worker.py): kind byte, f64 time, u64 payload length (little
// endian), payload.
constexpr size_t kOutcomeHeader = 1 + 8 + 8;

bool outcome_complete(const std::string& data) {
  if (data.size() < kOutcomeHeader) return false;
  uint64_t size = 0;
  for (int i = 7; i >= 0; --i) size = (size << 8) | static_cast<unsigned char>(data[9 + i]);
  return data.size() - kOutcomeHeader >= size;
}

uint64_t make_tag(int rank, Kind kind) { return (static_cast<uint64_t>(rank) << 3) | kind; }

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;  // a full disk must not stop the pump: the tail and live lines still work
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

double monotonic_now() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

Supervisor::Supervisor(SupervisorOptions options) : opt_(std::move(options)) {
  if (opt_.nranks < 1) throw LaunchError(ErrorKind::kInvalidInput, "nranks must be >= 1");
  ranks_.resize(static_cast<size_t>(opt_.nranks));
  for (int r = 0; r < opt_.nranks; ++r) ranks_[static_cast<size_t>(r)].status.rank = r;
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_.valid()) throw LaunchSystemError("epoll_create1", errno);
  register_parent_fd(epoll_.get());
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_.valid()) throw LaunchSystemError("eventfd", errno);
  register_parent_fd(wake_fd_.get());
  add_epoll(wake_fd_.get(), kWakeTag);
  started_ = monotonic_now();
  if (opt_.timeout_s > 0) timeout_at_ = started_ + opt_.timeout_s;
  owner_pid_ = ::getpid();
  thread_ = std::make_unique<std::thread>([this] { loop(); });
}

Supervisor::~Supervisor() {
  if (::getpid() != owner_pid_) {
    // Destroyed in a forked child (its garbage collector found the parent's object): the thread
    // does not exist here and the ranks are not ours. Leak everything; touch nothing.
    (void)thread_.release();
    for (auto* fd : {&epoll_, &wake_fd_}) (void)fd->release();
    for (auto& r : ranks_)
      for (auto* fd : {&r.out_r, &r.err_r, &r.res_r, &r.status_r, &r.pidfd, &r.out_w, &r.err_w,
                       &r.res_w, &r.status_w, &r.log})
        (void)fd->release();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) {
      // Destroyed while ranks still run (the Python object was dropped): never leave them behind.
      for (auto& r : ranks_)
        if (r.status.attached && !r.status.exited) kill_group(r.status.pid, SIGKILL);
      sealed_ = true;
    }
    stop_ = true;
    wake();  // under mu_: the loop thread closes the eventfd under it when the job ends
  }
  join_thread();
}

void Supervisor::join_thread() {
  if (::getpid() != owner_pid_) return;  // a forked copy: the thread exists only in the owner
  std::lock_guard<std::mutex> lock(join_mu_);
  if (thread_ && thread_->joinable() && thread_->get_id() != std::this_thread::get_id())
    thread_->join();
}

void Supervisor::release_resources() {
  // A finished job stays readable (results, tails, dumps, lines) for as long as the user keeps
  // its handle, which can be the rest of a long kernel session: it must not hold descriptors.
  // Called under mu_ by the loop thread, which exits right after; every wake() runs under mu_.
  for (auto& r : ranks_)
    for (auto* fd : {&r.out_r, &r.err_r, &r.res_r, &r.status_r, &r.pidfd, &r.out_w, &r.err_w,
                     &r.res_w, &r.status_w, &r.log})
      fd->reset();
  epoll_.reset();
  wake_fd_.reset();
}

void Supervisor::add_epoll(int fd, uint64_t tag) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = tag;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
    throw LaunchSystemError("epoll_ctl", errno);
}

void Supervisor::remove_fd(UniqueFd& fd) {
  if (!fd.valid()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
  fd.reset();
}

void Supervisor::wake() {
  if (!wake_fd_.valid()) return;  // done: the loop is gone and the descriptor closed
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_.get(), &one, sizeof one);
  (void)ignored;
}

RankFds Supervisor::open_rank(int rank, bool external_status) {
  std::lock_guard<std::mutex> lock(mu_);
  if (rank < 0 || rank >= opt_.nranks)
    throw LaunchError(ErrorKind::kInvalidInput, "rank " + std::to_string(rank) + " out of range");
  Rank& r = ranks_[static_cast<size_t>(rank)];
  if (r.out_r.valid() || r.status.attached)
    throw LaunchError(ErrorKind::kInvalidInput, "rank " + std::to_string(rank) + " opened twice");
  Pipe out = make_pipe(true), err = make_pipe(true), res = make_pipe(true);
  r.out_r = std::move(out.read);
  r.out_w = std::move(out.write);
  r.err_r = std::move(err.read);
  r.err_w = std::move(err.write);
  r.res_r = std::move(res.read);
  r.res_w = std::move(res.write);
  r.external = external_status;
  if (external_status) {
    Pipe st = make_pipe(true);
    r.status_r = std::move(st.read);
    r.status_w = std::move(st.write);
  }
  std::string path = log_path(rank);
  r.log.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!r.log.valid()) throw LaunchSystemError("cannot open log file " + path, errno);
  register_parent_fd(r.log.get());
  add_epoll(r.out_r.get(), make_tag(rank, kStdout));
  add_epoll(r.err_r.get(), make_tag(rank, kStderr));
  add_epoll(r.res_r.get(), make_tag(rank, kResult));
  if (external_status) add_epoll(r.status_r.get(), make_tag(rank, kStatus));
  return RankFds{r.out_w.get(), r.err_w.get(), r.res_w.get(),
                 external_status ? r.status_w.get() : -1};
}

pid_t Supervisor::spawn_rank(int rank, SpawnSpec spec, int result_fd) {
  RankFds fds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Rank& r = ranks_.at(static_cast<size_t>(rank));
    if (!r.out_w.valid())
      throw LaunchError("spawn_rank: rank " + std::to_string(rank) + " not opened");
    fds = RankFds{r.out_w.get(), r.err_w.get(), r.res_w.get(), -1};
  }
  spec.fds.emplace_back(fds.stdout_w, 1);
  spec.fds.emplace_back(fds.stderr_w, 2);
  spec.fds.emplace_back(fds.result_w, result_fd);
  pid_t pid = spawn(spec);
  attach_rank(rank, pid);
  return pid;
}

void Supervisor::attach_rank(int rank, pid_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  Rank& r = ranks_.at(static_cast<size_t>(rank));
  r.status.pid = pid;
  r.status.attached = true;
  // Our copies of the child ends must go, or the pipes never reach EOF.
  r.out_w.reset();
  r.err_w.reset();
  r.res_w.reset();
  r.status_w.reset();
  reaper_track(pid);
  if (!r.external) {
    r.pidfd.reset(open_pidfd(pid));
    if (r.pidfd.valid()) {
      register_parent_fd(r.pidfd.get());
      add_epoll(r.pidfd.get(), make_tag(rank, kPidfd));
    }
  }
  if (r.status_before_attach) {
    on_exit(r, r.wait_status_before_attach, r.lost_before_attach);
  } else if (teardown_) {
    // A rank attached after the teardown began (it was being started) goes down at once.
    kill_group(pid, SIGKILL);
  }
  wake();
}

void Supervisor::seal() {
  std::lock_guard<std::mutex> lock(mu_);
  sealed_ = true;
  wake();
}

void Supervisor::kill(double grace_s) {
  std::lock_guard<std::mutex> lock(mu_);
  if (done_) return;
  kill_request_ = true;
  kill_request_grace_ = grace_s;
  wake();
}

void Supervisor::loop() {
  sigset_t all;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
  epoll_event events[64];
  for (;;) {
    int n = ::epoll_wait(epoll_.get(), events, 64, 20);
    std::unique_lock<std::mutex> lock(mu_);
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kWakeTag) {
        uint64_t v;
        ssize_t ignored = ::read(wake_fd_.get(), &v, sizeof v);
        (void)ignored;
        continue;
      }
      handle(events[i].data.u64);
    }
    if (kill_request_) {
      kill_request_ = false;
      begin_teardown(JobState::kKilled, kill_request_grace_);
    }
    check_timers();
    check_done();
    if (done_ || stop_) {
      if (done_) release_resources();
      cv_.notify_all();
      return;
    }
    // A known failure wakes the waiters that report it while the other ranks go down.
    if (!lines_.empty() || failure_known()) cv_.notify_all();
  }
}

void Supervisor::handle(uint64_t tag) {
  int rank = static_cast<int>(tag >> 3);
  Kind kind = static_cast<Kind>(tag & 7);
  Rank& r = ranks_[static_cast<size_t>(rank)];
  switch (kind) {
    case kStdout:
      read_stream(r, 1);
      break;
    case kStderr:
      read_stream(r, 2);
      break;
    case kResult:
      read_result(r);
      break;
    case kStatus:
      read_status(r);
      break;
    case kPidfd:
      on_child_ready(r);
      break;
  }
}

void Supervisor::read_stream(Rank& r, int stream) {
  UniqueFd& fd = stream == 1 ? r.out_r : r.err_r;
  char buf[65536];
  // One bounded read per wake-up keeps a flooding rank from starving the others.
  for (int i = 0; i < 4 && fd.valid(); ++i) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n > 0) {
      emit(r, stream, buf, static_cast<size_t>(n));
      if (static_cast<size_t>(n) < sizeof buf) return;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    // EOF (or error): flush the unterminated last line.
    flush_lines(r, stream);
    remove_fd(fd);
    return;
  }
}

void Supervisor::emit(Rank& r, int stream, const char* data, size_t n) {
  if (r.log.valid()) write_all(r.log.get(), data, n);
  r.tail.append(data, n);
  if (r.tail.size() > 2 * opt_.tail_bytes) r.tail.erase(0, r.tail.size() - opt_.tail_bytes);
  if (stream == 2 && dump_until_ > 0 && r.dump.size() < kMaxDump) r.dump.append(data, n);
  if (!opt_.stream) return;
  r.lines[stream].feed(data, n, [&](std::string line) {
    push_line(r.status.rank, stream, std::move(line));
  });
}

void Supervisor::flush_lines(Rank& r, int stream) {
  r.lines[stream].flush([&](std::string line) {
    push_line(r.status.rank, stream, std::move(line));
  });
}

void Supervisor::push_line(int rank, int stream, std::string text) {
  if (!opt_.stream) return;
  if (line_bytes_ + text.size() > opt_.line_queue_bytes) {
    ++dropped_lines_;  // the pump never blocks on a slow reader; the log file has everything
    return;
  }
  line_bytes_ += text.size();
  lines_.push_back(Line{rank, stream, std::move(text)});
}

void Supervisor::read_result(Rank& r) {
  char buf[65536];
  while (r.res_r.valid()) {
    ssize_t n = ::read(r.res_r.get(), buf, sizeof buf);
    if (n > 0) {
      r.result.append(buf, static_cast<size_t>(n));
      // An exception result ('E' first) means the rank is failing: start the teardown of the
      // others now instead of after its exit, which costs milliseconds for a large process.
      if (!r.reported_failure && r.result[0] == 'E') {
        r.reported_failure = true;
        // Raised after another rank's failure began the teardown (a collective whose peer
        // went away): collateral, not a cause. Results are read in the order they arrive, so
        // the first failure always starts the teardown before a consequence is read.
        r.reported_after_teardown = teardown_;
        r.status.after_teardown = teardown_;  // known now, before the rank has exited
        if (!teardown_) {
          failure_rank_ = r.status.rank;
          begin_teardown(JobState::kFailed, opt_.grace_s);
        }
      }
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    remove_fd(r.res_r);
  }
}

void Supervisor::read_status(Rank& r) {
  int32_t st;
  ssize_t n = ::read(r.status_r.get(), &st, sizeof st);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  remove_fd(r.status_r);
  if (r.status.exited) return;
  if (!r.status.attached) {
    // Dropping it would leave the rank running forever as far as we know: the job would never
    // end (its status pipe is gone and an external rank has no pidfd).
    r.status_before_attach = true;
    r.lost_before_attach = n != sizeof st;
    r.wait_status_before_attach = n == sizeof st ? st : 0;
    return;
  }
  on_exit(r, n == sizeof st ? st : 0, n != sizeof st);
}

void Supervisor::on_child_ready(Rank& r) {
  if (!r.status.attached || r.status.exited) return;
  // The rank is a zombie now, so its pid (= its group id) cannot be reused yet: sweep the
  // grandchildren first, then reap.
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(r.status.pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    // Reaped by someone else before we looked (a stray waitpid(-1) in user code): its pidfd
    // stays readable forever, so the rank must end here or the job never would.
    if (errno == ECHILD) on_exit(r, 0, true);
    return;
  }
  if (info.si_pid == 0) return;
  kill_group(r.status.pid, SIGKILL);
  int st = 0;
  pid_t got = ::waitpid(r.status.pid, &st, WNOHANG);
  if (got == r.status.pid) {
    on_exit(r, st, false);
  } else if (got < 0 && errno == ECHILD) {
    on_exit(r, 0, true);  // someone else reaped it (a stray waitpid(-1) in user code)
  }
}

void Supervisor::on_exit(Rank& r, int wait_status, bool lost) {
  r.status.exited = true;
  r.status.wait_status = wait_status;
  r.status.lost = lost;
  r.status.exit_time = monotonic_now();
  r.status.after_teardown = r.reported_failure ? r.reported_after_teardown : teardown_;
  // Everything the rank wrote is in the pipes now; read it all before closing them.
  for (int i = 0; i < 1024; ++i) {
    size_t before = r.tail.size() + r.result.size();
    read_stream(r, 1);
    read_stream(r, 2);
    read_result(r);
    if (r.tail.size() + r.result.size() == before) break;
  }
  for (int s = 1; s <= 2; ++s) flush_lines(r, s);
  remove_fd(r.out_r);
  remove_fd(r.err_r);
  remove_fd(r.res_r);
  remove_fd(r.status_r);
  remove_fd(r.pidfd);
  r.log.reset();
  reaper_untrack(r.status.pid);
  bool ok = !lost && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
  if (!ok && !teardown_ && dump_until_ > 0 && !lost && WIFSIGNALED(wait_status) &&
      WTERMSIG(wait_status) == opt_.dump_signal) {
    // The timeout's stack-dump signal ended a rank with no handler for it (a script or a command
    // rank; nbdist's own ranks dump their stacks on it): the timeout stopped it, not a failure.
    r.status.after_teardown = true;
    begin_teardown(JobState::kTimedOut, opt_.grace_s);
    return;
  }
  if (!ok && !teardown_) {
    failure_rank_ = r.status.rank;
    begin_teardown(JobState::kFailed, opt_.grace_s);
  }
}

void Supervisor::begin_teardown(JobState state, double grace_s) {
  if (teardown_) {
    // A kill() during a failure's grace period may shorten it, never lengthen it.
    double at = monotonic_now() + grace_s;
    if (state == JobState::kKilled && at < kill_deadline_) kill_deadline_ = at;
    return;
  }
  teardown_ = true;
  final_state_ = state;
  dump_until_ = 0;
  int sig = grace_s > 0 ? SIGTERM : SIGKILL;
  // A rank that reported its exception is exiting by itself: a SIGTERM now would replace its
  // exit code with a signal (the SIGKILL after the grace still covers a hang on its way out).
  for (auto& r : ranks_)
    if (r.status.attached && !r.status.exited && !r.reported_failure) kill_group(r.status.pid, sig);
  kill_deadline_ = monotonic_now() + grace_s;
  killed_hard_ = grace_s <= 0;
}

void Supervisor::check_timers() {
  double now = monotonic_now();
  if (!teardown_ && timeout_at_ > 0 && now >= timeout_at_) {
    timeout_at_ = 0;
    dump_until_ = now + opt_.dump_wait_s;
    for (auto& r : ranks_)
      if (r.status.attached && !r.status.exited) ::kill(r.status.pid, opt_.dump_signal);
  }
  if (!teardown_ && dump_until_ > 0 && now >= dump_until_) {
    begin_teardown(JobState::kTimedOut, opt_.grace_s);
    dump_until_ = 0;
  }
  if (teardown_ && !killed_hard_ && now >= kill_deadline_) {
    killed_hard_ = true;
    for (auto& r : ranks_)
      if (r.status.attached && !r.status.exited) kill_group(r.status.pid, SIGKILL);
  }
  // Without pidfd (kernels before 5.3) exits are found by polling.
  for (auto& r : ranks_)
    if (r.status.attached && !r.status.exited && !r.external && !r.pidfd.valid()) on_child_ready(r);
}

void Supervisor::check_done() {
  if (done_ || !sealed_) return;
  for (auto& r : ranks_)
    if (r.status.attached && !r.status.exited) return;
  if (!teardown_) {
    bool any_attached = false;
    for (auto& r : ranks_) any_attached |= r.status.attached;
    final_state_ = any_attached ? JobState::kSucceeded : JobState::kFailed;
  }
  if (dropped_lines_ > 0) {
    lines_.push_back(Line{-1, 2,
                          std::to_string(dropped_lines_) +
                              " output lines were not shown live (reader too slow); "
                              "the rank log files have everything"});
    dropped_lines_ = 0;
  }
  ended_ = monotonic_now();
  done_ = true;
}

bool Supervisor::wait(double timeout_s, bool or_failed) {
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [this, or_failed] { return done_ || (or_failed && failure_known()); };
  bool finished;
  if (timeout_s < 0) {
    cv_.wait(lock, ready);
    finished = true;
  } else {
    finished = cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), ready);
  }
  bool joinable = done_;
  lock.unlock();
  if (joinable) join_thread();
  return finished;
}

bool Supervisor::wait_activity(double timeout_s, bool or_failed) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(
      lock, std::chrono::duration<double>(std::max(0.0, timeout_s)),
      [this, or_failed] { return done_ || (or_failed && failure_known()) || !lines_.empty(); });
}

bool Supervisor::failed() {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_known();
}

bool Supervisor::failure_known() const {
  if (!teardown_ || final_state_ != JobState::kFailed) return false;
  if (failure_rank_ < 0) return true;
  const Rank& r = ranks_[static_cast<size_t>(failure_rank_)];
  return r.status.exited || outcome_complete(r.result);
}

bool Supervisor::done() {
  bool finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished = done_;
  }
  if (finished) join_thread();
  return finished;
}

std::vector<Line> Supervisor::take_lines(size_t max_lines) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Line> out;
  while (!lines_.empty() && out.size() < max_lines) {
    line_bytes_ -= lines_.front().text.size();
    out.push_back(std::move(lines_.front()));
    lines_.pop_front();
  }
  if (lines_.empty() && dropped_lines_ > 0 && !done_) {
    out.push_back(Line{-1, 2,
                       std::to_string(dropped_lines_) +
                           " output lines were not shown live (reader too slow); "
                           "the rank log files have everything"});
    dropped_lines_ = 0;
  }
  return out;
}

void Supervisor::set_stream(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  opt_.stream = on;
  if (!on) {
    lines_.clear();
    line_bytes_ = 0;
  }
}

JobState Supervisor::state() {
  std::lock_guard<std::mutex> lock(mu_);
  return done_ ? final_state_ : JobState::kRunning;
}

std::vector<RankStatus> Supervisor::ranks() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RankStatus> out;
  for (auto& r : ranks_) out.push_back(r.status);
  return out;
}

std::string Supervisor::result(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  return ranks_.at(static_cast<size_t>(rank)).result;
}

std::string Supervisor::tail(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string& t = ranks_.at(static_cast<size_t>(rank)).tail;
  return t.size() > opt_.tail_bytes ? t.substr(t.size() - opt_.tail_bytes) : t;
}

std::string Supervisor::dump(int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  return ranks_.at(static_cast<size_t>(rank)).dump;
}

std::string Supervisor::log_path(int rank) {
  if (rank >= 0 && static_cast<size_t>(rank) < opt_.log_names.size())
    return opt_.log_dir + "/" + opt_.log_names[static_cast<size_t>(rank)];
  return opt_.log_dir + "/rank_" + std::to_string(rank) + ".log";
}

double Supervisor::ended() {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

}  // namespace nbdist::launch
