#include "monitor/nvml.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>

namespace nbdist::monitor {

namespace {

// The few NVML ABI types we use, declared here so that no NVML header is needed to build. They are
// part of NVML's stable C ABI (unchanged since the v2 entry points of CUDA 5.5 / driver 319).
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
constexpr nvmlReturn_t kSuccess = 0;
constexpr nvmlReturn_t kNotSupported = 3;
constexpr nvmlReturn_t kFunctionNotFound = 13;
constexpr int kTemperatureGpu = 0;  // NVML_TEMPERATURE_GPU
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

struct Nvml::Api {
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*system_driver_version)(char*, unsigned int) = nullptr;
  nvmlReturn_t (*device_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned int) = nullptr;
  nvmlReturn_t (*power)(nvmlDevice_t, unsigned int*) = nullptr;
  nvmlReturn_t (*energy)(nvmlDevice_t, unsigned long long*) = nullptr;
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
  nvmlReturn_t (*temperature)(nvmlDevice_t, int, unsigned int*) = nullptr;

  std::string message(nvmlReturn_t rc) const {
    const char* s = error_string ? error_string(rc) : nullptr;
    return std::string(s ? s : "unknown NVML error") + " (NVML code " + std::to_string(rc) + ")";
  }
};

namespace {

std::string library_path() {
  const char* env = std::getenv("NBDIST_NVML_LIBRARY");
  return env && *env ? env : "libnvidia-ml.so.1";
}

template <typename Fn>
void resolve(void* lib, const char* symbol, Fn& fn) {
  fn = reinterpret_cast<Fn>(dlsym(lib, symbol));
}

// Loads `path` once per process and resolves the entry points. Returns nullptr and sets `reason`
// when the library or one of the required symbols is missing.
const Nvml::Api* load(const std::string& path, std::string& reason) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<Nvml::Api>> loaded;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(path);
  if (it != loaded.end()) return it->second.get();

  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* err = dlerror();
    reason =
        path + " not found (no NVIDIA driver on this machine?): " + (err ? err : "dlopen failed");
    return nullptr;
  }
  auto api = std::make_unique<Nvml::Api>();
  resolve(lib, "nvmlInit_v2", api->init);
  resolve(lib, "nvmlShutdown", api->shutdown);
  resolve(lib, "nvmlErrorString", api->error_string);
  resolve(lib, "nvmlSystemGetDriverVersion", api->system_driver_version);
  resolve(lib, "nvmlDeviceGetCount_v2", api->device_count);
  resolve(lib, "nvmlDeviceGetHandleByIndex_v2", api->handle_by_index);
  resolve(lib, "nvmlDeviceGetUUID", api->uuid);
  resolve(lib, "nvmlDeviceGetName", api->name);
  // The sampled fields are optional: an old driver without one just reports it as unsupported.
  resolve(lib, "nvmlDeviceGetPowerUsage", api->power);
  resolve(lib, "nvmlDeviceGetTotalEnergyConsumption", api->energy);
  resolve(lib, "nvmlDeviceGetUtilizationRates", api->utilization);
  resolve(lib, "nvmlDeviceGetMemoryInfo", api->memory);
  resolve(lib, "nvmlDeviceGetTemperature", api->temperature);
  const char* missing = !api->init              ? "nvmlInit_v2"
                        : !api->shutdown        ? "nvmlShutdown"
                        : !api->device_count    ? "nvmlDeviceGetCount_v2"
                        : !api->handle_by_index ? "nvmlDeviceGetHandleByIndex_v2"
                                                : nullptr;
  if (missing) {
    // Not dlclose'd: harmless, and a concurrent loader of the same path may hold it.
    reason = path + " is not a usable NVML library: symbol " + missing + " is missing";
    return nullptr;
  }
  return (loaded[path] = std::move(api)).get();
}

std::string fixed_string(const char* buf, size_t n) {
  size_t len = 0;
  while (len < n && buf[len]) ++len;
  return std::string(buf, len);
}

}  // namespace

Nvml::Nvml(const Api* api, std::string library) : api_(api), library_(std::move(library)) {}

Nvml::~Nvml() { api_->shutdown(); }

std::shared_ptr<Nvml> Nvml::open() {
  std::string path = library_path();
  std::string reason;
  const Api* api = load(path, reason);
  if (!api) throw MonitorError(reason);
  nvmlReturn_t rc = api->init();
  if (rc != kSuccess) throw MonitorError("nvmlInit failed in " + path + ": " + api->message(rc));
  std::shared_ptr<Nvml> nvml(new Nvml(api, path));
  unsigned int count = 0;
  rc = api->device_count(&count);
  if (rc != kSuccess) throw MonitorError("nvmlDeviceGetCount failed: " + api->message(rc));
  nvml->handles_.assign(count, nullptr);
  for (unsigned int i = 0; i < count; ++i) {
    rc = api->handle_by_index(i, &nvml->handles_[i]);
    // A device NVML cannot open (no permission, lost) stays null and is reported when asked for.
    if (rc != kSuccess) nvml->handles_[i] = nullptr;
  }
  return nvml;
}

Availability Nvml::probe() {
  Availability a;
  a.library = library_path();
  try {
    auto nvml = open();
    a.available = true;
    a.device_count = nvml->device_count();
    if (nvml->api_->system_driver_version) {
      char buf[96] = {};
      if (nvml->api_->system_driver_version(buf, sizeof buf) == kSuccess)
        a.driver_version = fixed_string(buf, sizeof buf);
    }
  } catch (const Error& e) {
    a.available = false;
    a.reason = e.what();
  }
  return a;
}

int Nvml::device_count() const { return static_cast<int>(handles_.size()); }

void* Nvml::handle(int index) const {
  if (index < 0 || index >= device_count())
    throw MonitorError(ErrorKind::kInvalidInput, "NVML device index " + std::to_string(index) +
                                                     " does not exist (NVML sees " +
                                                     std::to_string(device_count()) +
                                                     " device(s))");
  if (!handles_[index])
    throw MonitorError("NVML device " + std::to_string(index) +
                       " could not be opened (nvmlDeviceGetHandleByIndex failed)");
  return handles_[index];
}

DeviceInfo Nvml::device(int index) const {
  nvmlDevice_t dev = handle(index);
  DeviceInfo info;
  info.index = index;
  char buf[96] = {};
  if (api_->uuid && api_->uuid(dev, buf, sizeof buf) == kSuccess)
    info.uuid = fixed_string(buf, sizeof buf);
  char name[96] = {};
  if (api_->name && api_->name(dev, name, sizeof name) == kSuccess)
    info.name = fixed_string(name, sizeof name);

  // A query is supported when it answers now; NOT_SUPPORTED (or a missing symbol) means never.
  // Any other failure also marks the field unsupported: we cannot sample what we cannot read.
  unsigned int u = 0;
  unsigned long long e = 0;
  nvmlUtilization_t util{};
  nvmlMemory_t mem{};
  info.support.power = api_->power && api_->power(dev, &u) == kSuccess;
  info.support.energy = api_->energy && api_->energy(dev, &e) == kSuccess;
  info.support.utilization = api_->utilization && api_->utilization(dev, &util) == kSuccess;
  info.support.memory = api_->memory && api_->memory(dev, &mem) == kSuccess;
  info.support.temperature =
      api_->temperature && api_->temperature(dev, kTemperatureGpu, &u) == kSuccess;
  if (info.support.memory) info.memory_total = mem.total;
  return info;
}

Nvml::Reading Nvml::read(int index, const Support& support) const {
  nvmlDevice_t dev = handle(index);
  Reading r{kNaN, kNaN, kNaN, kNaN, kNaN, kNaN, {}};
  auto failed = [&](const char* what, nvmlReturn_t rc) {
    if (r.error.empty() && rc != kNotSupported && rc != kFunctionNotFound)
      r.error = std::string(what) + ": " + api_->message(rc);
  };
  nvmlReturn_t rc;
  if (support.power) {
    unsigned int mw = 0;
    if ((rc = api_->power(dev, &mw)) == kSuccess)
      r.power_w = mw / 1000.0;
    else
      failed("power", rc);
  }
  if (support.energy) {
    unsigned long long mj = 0;
    if ((rc = api_->energy(dev, &mj)) == kSuccess)
      r.energy_j = static_cast<double>(mj) / 1000.0;
    else
      failed("energy", rc);
  }
  if (support.utilization) {
    nvmlUtilization_t util{};
    if ((rc = api_->utilization(dev, &util)) == kSuccess) {
      r.util_gpu = util.gpu;
      r.util_mem = util.memory;
    } else {
      failed("utilization", rc);
    }
  }
  if (support.memory) {
    nvmlMemory_t mem{};
    if ((rc = api_->memory(dev, &mem)) == kSuccess)
      r.mem_used = static_cast<double>(mem.used);
    else
      failed("memory", rc);
  }
  if (support.temperature) {
    unsigned int t = 0;
    if ((rc = api_->temperature(dev, kTemperatureGpu, &t)) == kSuccess)
      r.temp_c = t;
    else
      failed("temperature", rc);
  }
  return r;
}

}  // namespace nbdist::monitor
