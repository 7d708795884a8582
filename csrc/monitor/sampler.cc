#include "monitor/sampler.h"

#include <pthread.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

namespace nbdist::monitor {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double cpu_clock_s(clockid_t clock) {
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) return kNaN;
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Linear interpolation of a cumulative quantity at time t, skipping NaN entries and clamping to
// the first/last valid sample. Returns NaN when no sample holds a value.
double cumulative_at(const std::vector<Sample>& s, double Sample::* field, int64_t t) {
  const Sample* prev = nullptr;
  for (const Sample& x : s) {
    if (std::isnan(x.*field)) continue;
    if (x.t_ns >= t) {
      if (!prev || x.t_ns == t) return x.*field;
      double f = double(t - prev->t_ns) / double(x.t_ns - prev->t_ns);
      return prev->*field + f * (x.*field - prev->*field);
    }
    prev = &x;
  }
  return prev ? prev->*field : kNaN;
}

}  // namespace

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

Sampler::Sampler(SamplerOptions options) : options_(std::move(options)) {
  if (!(options_.hz > 0) || !std::isfinite(options_.hz))
    throw MonitorError(ErrorKind::kInvalidInput,
                       "sampling rate hz=" + std::to_string(options_.hz) + " must be > 0");
  if (!(options_.energy_hz >= 0) || options_.energy_hz > options_.hz)
    throw MonitorError(ErrorKind::kInvalidInput,
                       "energy-counter rate energy_hz=" + std::to_string(options_.energy_hz) +
                           " must be in [0, hz=" + std::to_string(options_.hz) + "]");
  nvml_ = Nvml::open();
  for (int index : options_.devices) devices_.push_back(nvml_->device(index));
  samples_.resize(devices_.size());
  for (auto& s : samples_) s.reserve(options_.reserve);
}

Sampler::~Sampler() {
  // A destructor must not throw into the interpreter; stop() only fails on NVML reads, which
  // tick() already turns into recorded errors.
  try {
    stop();
  } catch (...) {
  }
}

void Sampler::start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    NBDIST_CHECK(!started_, "a Sampler is started once");
    started_ = true;
  }
  tick(true);
  // Assigned under the lock: thread_cpu_s() may read thread_ from another Python thread.
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_requested_) return;  // stopped from another thread meanwhile: nobody would join it
  thread_ = std::thread([this] { run(); });
}

void Sampler::stop() {
  // Serialises concurrent stop() calls (the atexit hook and a user's thread) around the join.
  std::lock_guard<std::mutex> stopping(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || stopped_) return;
    stop_requested_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  tick(true);
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
}

size_t Sampler::mark() {
  // stop_mu_ orders a mark against stop(): a mark never lands after the final sample.
  std::lock_guard<std::mutex> stopping(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || stop_requested_)
      throw MonitorError("mark(): the sampler is not running (start() it first; after stop() "
                         "the window ends at the final sample)");
  }
  return tick(true);
}

bool Sampler::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return started_ && !stop_requested_;
}

void Sampler::run() {
  using clock = std::chrono::steady_clock;
  const auto period =
      std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(1.0 / options_.hz));
  auto next = clock::now() + period;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // A condition variable, not a sleep: stop() wakes us at once instead of after a period.
      if (wake_.wait_until(lock, next, [this] { return stop_requested_; })) break;
    }
    tick(false);
    next += period;
    auto now = clock::now();
    if (now > next) {
      // Fell behind (a suspended process, a slow driver call): skip the missed ticks rather than
      // firing a burst of back-to-back reads.
      std::lock_guard<std::mutex> lock(mu_);
      ++late_ticks_;
      next = now + period;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  final_thread_cpu_s_ = cpu_clock_s(CLOCK_THREAD_CPUTIME_ID);
}

size_t Sampler::tick(bool force_counter) {
  std::lock_guard<std::mutex> ticking(tick_mu_);
  // Due on the tick nearest the due time (half a period of slack), so that energy_hz = hz / k
  // reads the counter on exactly every k-th tick instead of alternating k and k+1.
  // In double: a tiny rate's period in ns would overflow int64.
  const int64_t now = now_ns();
  bool counter = force_counter;
  if (!counter && options_.energy_hz > 0)
    counter = double(now - last_counter_ns_) >= 1e9 / options_.energy_hz - 0.5e9 / options_.hz;
  if (counter) last_counter_ns_ = now;
  // The NVML reads happen outside mu_, so readers of the series never wait on the driver.
  std::vector<Sample> row(devices_.size());
  std::vector<std::string> errors;
  for (size_t i = 0; i < devices_.size(); ++i) {
    Support fields = devices_[i].support;
    fields.energy = fields.energy && counter;
    int64_t t0 = now_ns();
    Nvml::Reading r = nvml_->read(devices_[i].index, fields);
    int64_t t1 = now_ns();
    row[i] = Sample{t0 + (t1 - t0) / 2, r.power_w,  r.energy_j, kNaN,
                    r.util_gpu,         r.util_mem, r.mem_used, r.temp_c};
    if (!r.error.empty())
      errors.push_back("GPU " + std::to_string(devices_[i].index) + " " + r.error);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < row.size(); ++i) {
    auto& series = samples_[i];
    Sample& s = row[i];
    s.integrated_j = 0;
    // Running trapezoid over the latest sample that had a power value.
    for (auto it = series.rbegin(); it != series.rend(); ++it) {
      if (std::isnan(it->power_w)) continue;
      s.integrated_j = it->integrated_j;
      if (!std::isnan(s.power_w))
        s.integrated_j += 0.5 * (it->power_w + s.power_w) * double(s.t_ns - it->t_ns) * 1e-9;
      break;
    }
    series.push_back(s);
  }
  ++ticks_;
  counter_reads_ += counter;
  read_errors_ += errors.size();
  if (!errors.empty()) last_error_ = errors.back();
  return samples_.empty() ? 0 : samples_.front().size() - 1;
}

void Sampler::check_slot(size_t slot) const {
  if (slot >= devices_.size())
    throw MonitorError(ErrorKind::kInvalidInput, "monitor slot " + std::to_string(slot) +
                                                     " does not exist (monitoring " +
                                                     std::to_string(devices_.size()) + " GPUs)");
}

Series Sampler::series(size_t slot) const {
  check_slot(slot);
  std::lock_guard<std::mutex> lock(mu_);
  const auto& s = samples_[slot];
  const bool counter = devices_[slot].support.energy;
  const bool power = devices_[slot].support.power;
  Series out;
  double first_counter = kNaN;
  for (const Sample& x : s)
    if (!std::isnan(x.counter_j)) {
      first_counter = x.counter_j;
      break;
    }
  for (const Sample& x : s) {
    out.t_ns.push_back(x.t_ns);
    out.power_w.push_back(x.power_w);
    out.energy_j.push_back(counter ? x.counter_j - first_counter : power ? x.integrated_j : kNaN);
    out.util_gpu.push_back(x.util_gpu);
    out.util_mem.push_back(x.util_mem);
    out.mem_used.push_back(x.mem_used);
    out.temp_c.push_back(x.temp_c);
  }
  return out;
}

WindowStats Sampler::stats(size_t slot, int64_t t0, int64_t t1) const {
  check_slot(slot);
  if (t1 < t0)
    throw MonitorError(ErrorKind::kInvalidInput, "window end " + std::to_string(t1) +
                                                     " ns is before its start " +
                                                     std::to_string(t0) + " ns");
  std::lock_guard<std::mutex> lock(mu_);
  const auto& s = samples_[slot];
  const DeviceInfo& dev = devices_[slot];
  WindowStats w;
  w.method = dev.support.energy ? "counter" : dev.support.power ? "integrated" : "none";
  w.energy_j = w.counter_j = w.integrated_j = kNaN;
  w.mean_power_w = w.peak_power_w = w.mean_util_gpu = w.mean_util_mem = kNaN;
  w.peak_mem_used = w.peak_temp_c = kNaN;

  auto first = std::lower_bound(s.begin(), s.end(), t0,
                                [](const Sample& x, int64_t t) { return x.t_ns < t; });
  auto last = std::upper_bound(s.begin(), s.end(), t1,
                               [](int64_t t, const Sample& x) { return t < x.t_ns; });
  if (first >= last) return w;
  w.samples = size_t(last - first);
  // Clip the window to what was sampled: energy outside it is unknown, not zero.
  w.t0_ns = std::max(t0, s.front().t_ns);
  w.t1_ns = std::min(t1, s.back().t_ns);

  if (dev.support.energy)
    w.counter_j = cumulative_at(s, &Sample::counter_j, w.t1_ns) -
                  cumulative_at(s, &Sample::counter_j, w.t0_ns);
  if (dev.support.power)
    w.integrated_j = cumulative_at(s, &Sample::integrated_j, w.t1_ns) -
                     cumulative_at(s, &Sample::integrated_j, w.t0_ns);
  w.energy_j = dev.support.energy ? w.counter_j : w.integrated_j;

  double sum_ug = 0, sum_um = 0;
  size_t n_ug = 0, n_um = 0;
  for (auto it = first; it != last; ++it) {
    if (!std::isnan(it->power_w))
      w.peak_power_w =
          std::isnan(w.peak_power_w) ? it->power_w : std::max(w.peak_power_w, it->power_w);
    if (!std::isnan(it->util_gpu)) sum_ug += it->util_gpu, ++n_ug;
    if (!std::isnan(it->util_mem)) sum_um += it->util_mem, ++n_um;
    if (!std::isnan(it->mem_used))
      w.peak_mem_used =
          std::isnan(w.peak_mem_used) ? it->mem_used : std::max(w.peak_mem_used, it->mem_used);
    if (!std::isnan(it->temp_c))
      w.peak_temp_c = std::isnan(w.peak_temp_c) ? it->temp_c : std::max(w.peak_temp_c, it->temp_c);
  }
  if (n_ug) w.mean_util_gpu = sum_ug / n_ug;
  if (n_um) w.mean_util_mem = sum_um / n_um;
  const double seconds = double(w.t1_ns - w.t0_ns) * 1e-9;
  if (seconds > 0 && !std::isnan(w.integrated_j)) {
    w.mean_power_w = w.integrated_j / seconds;
  } else if (dev.support.power) {
    // A single sample: its power is the best estimate of the mean.
    w.mean_power_w = w.peak_power_w;
  }
  return w;
}

WindowStats Sampler::stats_rows(size_t slot, size_t row0, size_t row1) const {
  return stats(slot, row_t_ns(slot, row0), row_t_ns(slot, row1));
}

int64_t Sampler::row_t_ns(size_t slot, size_t row) const {
  check_slot(slot);
  std::lock_guard<std::mutex> lock(mu_);
  if (row >= samples_[slot].size())
    throw MonitorError(ErrorKind::kInvalidInput, "sample row " + std::to_string(row) +
                                                     " does not exist (" +
                                                     std::to_string(samples_[slot].size()) +
                                                     " samples so far)");
  return samples_[slot][row].t_ns;
}

uint64_t Sampler::counter_reads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counter_reads_;
}

size_t Sampler::sample_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return samples_.empty() ? 0 : samples_.front().size();
}

uint64_t Sampler::ticks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ticks_;
}

uint64_t Sampler::late_ticks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return late_ticks_;
}

uint64_t Sampler::read_errors() const {
  std::lock_guard<std::mutex> lock(mu_);
  return read_errors_;
}

std::string Sampler::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_error_;
}

double Sampler::thread_cpu_s() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!stop_requested_ && thread_.joinable()) {
    clockid_t clock;
    // const_cast: native_handle() is non-const, but only reads the pthread_t.
    if (pthread_getcpuclockid(const_cast<std::thread&>(thread_).native_handle(), &clock) == 0)
      return cpu_clock_s(clock);
    return kNaN;
  }
  return final_thread_cpu_s_;
}

}  // namespace nbdist::monitor
