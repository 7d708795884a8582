#pragma once

// NVML, loaded with dlopen at run time. nbdist has no build- or link-time dependency on the driver:
// on a machine without libnvidia-ml.so.1 (CI, laptops, CPU notebooks) the library is simply
// reported as unavailable, with the reason, and the rest of nbdist works.
//
// The library path is "libnvidia-ml.so.1" (the soname the driver installs) unless the environment
// variable NBDIST_NVML_LIBRARY names another file; the tests use that to load a small fake driver
// that exercises this loader and the sampler for real.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace nbdist::monitor {

NBDIST_DEFINE_ERROR(MonitorError, "monitor");

// Which NVML queries a device answers. Probed once per device when a sampler is created.
struct Support {
  bool power = false;        // nvmlDeviceGetPowerUsage (mW)
  bool energy = false;       // nvmlDeviceGetTotalEnergyConsumption (mJ since driver load)
  bool utilization = false;  // nvmlDeviceGetUtilizationRates (% GPU, % memory controller)
  bool memory = false;       // nvmlDeviceGetMemoryInfo (bytes used)
  bool temperature = false;  // nvmlDeviceGetTemperature (GPU die, degrees C)
};

struct DeviceInfo {
  int index = -1;             // NVML index (PCI bus order; independent of CUDA_VISIBLE_DEVICES)
  std::string uuid;           // "GPU-xxxxxxxx-..." as CUDA_VISIBLE_DEVICES may name it
  std::string name;           // marketing name, e.g. "NVIDIA H100 80GB HBM3"
  uint64_t memory_total = 0;  // bytes; 0 when the memory query is unsupported
  Support support;
};

// Whether NVML can be used here, and if not, why (a sentence a user can act on).
struct Availability {
  bool available = false;
  std::string reason;          // empty when available
  std::string library;         // the path handed to dlopen
  std::string driver_version;  // empty when unavailable
  int device_count = 0;
};

// One NVML session: nvmlInit on construction, nvmlShutdown on destruction (NVML reference-counts
// these, so several sessions may coexist). Calls are thread-safe (NVML itself is).
class Nvml {
 public:
  // Loads the library (once per path, never unloaded, because sampler threads may still be inside
  // it at interpreter exit) and initialises it. Throws MonitorError with the reason on failure.
  static std::shared_ptr<Nvml> open();
  // Never throws: reports what open() would say.
  static Availability probe();

  ~Nvml();
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  int device_count() const;
  DeviceInfo device(int index) const;  // throws MonitorError naming the index when it is invalid

  // One reading of every supported field of a device. A field that failed this time is NaN, and
  // `error` holds the NVML message of the first failure (a lost GPU, a driver reset).
  struct Reading {
    double power_w;
    double energy_j;  // the raw counter, in J (mJ / 1000), since driver load
    double util_gpu;  // percent
    double util_mem;  // percent
    double mem_used;  // bytes
    double temp_c;
    std::string error;
  };
  Reading read(int index, const Support& support) const;

  const std::string& library() const { return library_; }

  struct Api;  // the resolved function pointers (defined in nvml.cc)

 private:
  Nvml(const Api* api, std::string library);
  void* handle(int index) const;

  const Api* api_;
  std::string library_;
  std::vector<void*> handles_;  // nvmlDevice_t per NVML index, resolved once
};

}  // namespace nbdist::monitor
