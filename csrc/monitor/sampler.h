#pragma once

// The GPU sampler: one thread that reads every monitored device at a fixed rate and appends the
// readings to preallocated per-device series, plus the window statistics computed from them.
//
// Energy of a window is the delta of NVML's total-energy counter where the device has one
// (method "counter"); the counter is read at a lower rate than the other fields (it is by far the
// most expensive query) but always at start, stop and every mark(), so windows between those
// points get an exact delta. Otherwise the trapezoidal integral of the sampled power (method
// "integrated"); a device with neither reports method "none" and NaN joules, never 0 J.

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "monitor/nvml.h"

namespace nbdist::monitor {

// CLOCK_MONOTONIC in nanoseconds: the sample clock (Python's time.monotonic_ns() reads the same
// one).
int64_t now_ns();

struct SamplerOptions {
  std::vector<int> devices;  // NVML indices, in the order the caller reports them
  double hz = 10.0;          // ticks per second; each tick reads every device once
  // Energy-counter reads per second (<= hz; 0: only at start, stop and mark()). The counter is
  // read on the tick nearest each due time. Why lower than hz: nvmlDeviceGetTotalEnergyConsumption
  // costs ~3.7 ms of CPU per call on H100 / driver 580, against ~0.01 ms for the other four
  // queries together, so at 10 Hz it alone would take 3.7 % of a core per GPU.
  double energy_hz = 1.0;
  size_t reserve = 36000;    // samples per device allocated up front (1 h at 10 Hz); grows beyond
};

// One tick's reading of one device. Unsupported or failed fields are NaN.
struct Sample {
  int64_t t_ns;         // CLOCK_MONOTONIC, midpoint of the reads
  double power_w;       // instantaneous (or driver-averaged) board power
  double counter_j;     // NVML total-energy counter, J since driver load; NaN on ticks that
                        // did not read it (see SamplerOptions::energy_hz)
  double integrated_j;  // trapezoidal integral of power_w since the first sample, J
  double util_gpu;      // percent of time a kernel ran
  double util_mem;      // percent of time device memory was read or written
  double mem_used;      // bytes
  double temp_c;        // GPU die temperature
};

// Column-major copy of one device's samples (what Python turns into a table).
struct Series {
  std::vector<int64_t> t_ns;
  std::vector<double> power_w, energy_j, util_gpu, util_mem, mem_used, temp_c;
  // energy_j: cumulative since the first sample, by the device's energy method (NaN for "none";
  // for "counter", NaN on the samples that did not read the counter).
};

struct WindowStats {
  int64_t t0_ns = 0, t1_ns = 0;  // the window actually covered by samples
  size_t samples = 0;
  std::string method;   // "counter", "integrated" or "none"
  double energy_j;      // by `method`; NaN for "none"
  double counter_j;     // counter delta; NaN without a counter
  double integrated_j;  // power integral; NaN without power (kept to cross-check the counter)
  double mean_power_w;  // time-weighted (integral / duration)
  double peak_power_w;
  double mean_util_gpu, mean_util_mem;
  double peak_mem_used;  // bytes
  double peak_temp_c;
};

class Sampler {
 public:
  // Opens NVML and probes each device's support matrix. Throws MonitorError (kInvalidInput for a
  // device index NVML does not have) before any thread starts.
  explicit Sampler(SamplerOptions options);
  ~Sampler();  // stops the thread
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  // Takes the first sample synchronously (so the window starts now), then starts the thread.
  void start();
  // Wakes and joins the thread, then takes a final sample (so the window ends now). Idempotent.
  void stop();
  // Takes a sample now, on the calling thread, with an energy-counter read, and returns its row
  // (the index of that sample in every device's series). A window bounded by such rows (and the
  // start and stop rows, which read the counter too) gets an exact counter delta. Throws
  // MonitorError when the sampler is not running.
  size_t mark();
  bool running() const;

  const std::vector<DeviceInfo>& devices() const { return devices_; }
  double hz() const { return options_.hz; }

  // slot = position in SamplerOptions::devices.
  Series series(size_t slot) const;
  // Statistics of the samples within [t0_ns, t1_ns]; energies are interpolated at the window's ends
  // so that windows between marks add up.
  WindowStats stats(size_t slot, int64_t t0_ns, int64_t t1_ns) const;
  // The same statistics over the samples from row0 to row1 (inclusive) of this device: rows from
  // mark() (or 0 and the last row) give counter deltas without interpolation.
  WindowStats stats_rows(size_t slot, size_t row0, size_t row1) const;
  int64_t row_t_ns(size_t slot, size_t row) const;  // the time of one sample
  size_t sample_count() const;

  uint64_t ticks() const;          // ticks taken (each reads every device)
  uint64_t late_ticks() const;     // ticks that started more than one period late (skipped ahead)
  uint64_t counter_reads() const;  // ticks (marks, start and stop included) that read the counter
  uint64_t read_errors() const;    // failed field reads (GPU lost, driver reset...)
  std::string last_error() const;  // the NVML message of the latest failed read
  double thread_cpu_s() const;     // CPU time used by the sampler thread so far

 private:
  void run();
  size_t tick(bool force_counter);  // returns the row it appended
  void check_slot(size_t slot) const;

  SamplerOptions options_;
  std::shared_ptr<Nvml> nvml_;
  std::vector<DeviceInfo> devices_;

  std::mutex stop_mu_;  // held for the whole of stop() and mark()
  // Held for the whole of a tick (reads and append): a mark() on a user thread and the sampler
  // thread must not interleave, or a later reading could be appended before an earlier one.
  std::mutex tick_mu_;
  int64_t last_counter_ns_ = 0;  // guarded by tick_mu_
  mutable std::mutex mu_;  // guards everything below
  std::condition_variable wake_;
  std::vector<std::vector<Sample>> samples_;  // per slot
  bool started_ = false;
  bool stop_requested_ = false;
  bool stopped_ = false;
  uint64_t ticks_ = 0, late_ticks_ = 0, read_errors_ = 0, counter_reads_ = 0;
  std::string last_error_;
  double final_thread_cpu_s_ = 0;
  std::thread thread_;
};

}  // namespace nbdist::monitor
