#pragma once

// A Supervisor watches one group of processes (the ranks of one launch attempt): one thread
// epolls every rank's stdout/stderr pipes, its result pipe and its exit, pumps the output into
// per-rank log files, a bounded in-memory tail and a queue of lines for the foreground, and on the
// first failure tears the whole group down (SIGTERM to every process group, grace, SIGKILL).
//
// Ranks are attached one by one (spawned here, forked by Python, or forked by a zygote that
// reports exit statuses on a pipe); seal() says no more will come. The job is done when it is
// sealed and every attached rank has exited and been reaped.

#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "launch/fd.h"
#include "launch/lines.h"
#include "launch/process.h"

namespace nbdist::launch {

struct SupervisorOptions {
  std::string job_id;
  std::string log_dir;                 // directory of rank_<r>.log (created by the caller)
  int nranks = 1;                      // ranks 0..nranks-1
  size_t tail_bytes = 64 * 1024;       // in-memory tail kept per rank, bytes
  size_t line_queue_bytes = 16 << 20;  // live-line queue cap, bytes; excess lines are counted
  bool stream = true;                  // queue lines for the foreground at all
  double grace_s = 5.0;                // SIGTERM -> SIGKILL delay of a teardown, seconds
  double timeout_s = 0.0;              // whole-attempt deadline, seconds; 0 = none
  double dump_wait_s = 1.0;            // time given to stack dumps after a timeout, seconds
  int dump_signal = 12;                // SIGUSR2: ranks register faulthandler on it
  // Log file name of each rank inside log_dir; empty: rank_<r>.log. Lets a restarting load name
  // each run's log (run_<n>.log) while reusing one-rank supervisors.
  std::vector<std::string> log_names;
};

enum class JobState { kRunning, kSucceeded, kFailed, kKilled, kTimedOut };

// Descriptors a rank must inherit (child ends of its pipes). -1 where unused.
struct RankFds {
  int stdout_w = -1;
  int stderr_w = -1;
  int result_w = -1;
  int status_w = -1;  // only for ranks whose exit a zygote reports
};

struct RankStatus {
  int rank = -1;
  pid_t pid = 0;
  bool attached = false;
  bool exited = false;
  bool lost = false;            // the reporting zygote died: exit status unknown
  int wait_status = 0;          // raw waitpid status
  double exit_time = 0;         // CLOCK_MONOTONIC seconds when the exit was observed
  bool after_teardown = false;  // exited after the teardown began (collateral, not a cause)
};

struct Line {
  int rank;    // -1: a message from the supervisor itself
  int stream;  // 1 stdout, 2 stderr
  // Without the newline. A text ending in '\r' is a line not finished yet that the rank rewrites
  // with '\r' (a progress bar): what it shows now, to be replaced by the rank's next line.
  std::string text;
};

class Supervisor {
 public:
  explicit Supervisor(SupervisorOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Creates rank's pipes and log file; returns the child ends (valid until attach/spawn).
  RankFds open_rank(int rank, bool external_status);
  // Starts `spec` as rank (stdout->1, stderr->2, result pipe->result_fd) and attaches it.
  pid_t spawn_rank(int rank, SpawnSpec spec, int result_fd);
  // Attaches a rank started elsewhere; closes its child ends here.
  void attach_rank(int rank, pid_t pid);
  void seal();

  // Tears every rank down (SIGTERM, grace, SIGKILL); the job ends as killed unless it already
  // failed. Safe to call at any time and more than once.
  void kill(double grace_s);

  // true when done; `or_failed`: also when a failure began the teardown (the ranks may still be
  // on their way out: the caller can report the error without waiting for them).
  bool wait(double timeout_s, bool or_failed = false);
  // true when done (or failed, with `or_failed`) or lines are waiting
  bool wait_activity(double timeout_s, bool or_failed = false);
  bool done();
  // A rank failed, the teardown of the others began, and that rank's outcome is complete (it
  // exited, or its whole exception arrived): the failure can be reported. Stays true once done.
  bool failed();
  std::vector<Line> take_lines(size_t max_lines);
  void set_stream(bool on);

  JobState state();
  std::vector<RankStatus> ranks();
  std::string result(int rank);
  std::string tail(int rank);
  std::string dump(int rank);  // stderr written after the timeout's stack-dump signal
  std::string log_path(int rank);
  double started() const { return started_; }
  double ended();

 private:
  struct Rank {
    RankStatus status;
    UniqueFd out_r, err_r, res_r, status_r, pidfd;
    UniqueFd out_w, err_w, res_w, status_w;  // child ends until attach
    UniqueFd log;
    bool external = false;
    bool reported_failure = false;         // sent an exception result: it exits by itself
    bool reported_after_teardown = false;  // that exception came after the teardown began
    // A zygote may reap a short rank and report its status before attach_rank() runs (the
    // launcher still waiting for the zygote's reply): kept here and applied at attach.
    bool status_before_attach = false;
    bool lost_before_attach = false;
    int wait_status_before_attach = 0;
    LineSplitter lines[3];  // stdout, stderr (index 0 unused)
    std::string tail, result, dump;
  };

  void loop();
  void handle(uint64_t tag);
  void read_stream(Rank& r, int stream);
  void read_result(Rank& r);
  void read_status(Rank& r);
  void on_child_ready(Rank& r);
  void on_exit(Rank& r, int wait_status, bool lost);
  void emit(Rank& r, int stream, const char* data, size_t n);
  void flush_lines(Rank& r, int stream);
  void push_line(int rank, int stream, std::string text);
  void begin_teardown(JobState state, double grace_s);
  void check_timers();
  void check_done();
  bool failure_known() const;  // under mu_; what failed() answers
  void add_epoll(int fd, uint64_t tag);
  void remove_fd(UniqueFd& fd);
  void wake();
  void release_resources();
  void join_thread();

  SupervisorOptions opt_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Rank> ranks_;
  std::deque<Line> lines_;
  size_t line_bytes_ = 0;
  size_t dropped_lines_ = 0;
  UniqueFd epoll_, wake_fd_;
  bool sealed_ = false;
  bool done_ = false;
  int failure_rank_ = -1;  // the rank whose failure began the teardown
  bool stop_ = false;
  bool teardown_ = false;
  bool kill_request_ = false;
  double kill_request_grace_ = 0;
  JobState final_state_ = JobState::kRunning;
  double started_ = 0, ended_ = 0;
  double kill_deadline_ = 0;  // when SIGKILL follows SIGTERM; 0 = not armed
  double timeout_at_ = 0;     // 0 = no timeout
  double dump_until_ = 0;     // end of the stack-dump window; 0 = not dumping
  bool killed_hard_ = false;
  pid_t owner_pid_ = 0;  // the process that created it; a forked copy must not touch the ranks
  std::unique_ptr<std::thread> thread_;
  std::mutex join_mu_;  // the loop thread is joined once, by whichever caller first sees done
};

double monotonic_now();

}  // namespace nbdist::launch
