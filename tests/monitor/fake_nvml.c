/* A tiny fake NVIDIA driver library (libnvidia-ml.so.1) for the monitor tests on machines without
 * a GPU. It exports the NVML C entry points nbdist resolves with dlsym and answers them from a
 * known model, so the tests exercise nbdist's real dlopen loader, sampler thread and energy math.
 *
 * Device i (0 <= i < FAKE_NVML_DEVICES, default 2) draws
 *     P_i(t) = (100 + 50 i) W + 10 W/s * t,   t = (CLOCK_MONOTONIC - FAKE_NVML_T0_NS) in seconds,
 * and its energy counter is 1000 J + the exact integral of P_i from 0 to t (reported in mJ).
 * FAKE_NVML_NO_ENERGY / FAKE_NVML_NO_POWER: comma-separated device indices that answer
 * NVML_ERROR_NOT_SUPPORTED for the energy counter / power. FAKE_NVML_INIT_ERROR: an NVML code
 * nvmlInit_v2 returns instead of success. Configuration is read at every nvmlInit_v2.
 *
 * fake_nvml_power_calls / fake_nvml_energy_calls count the successful power and energy-counter
 * queries (all devices), so that tests can check through ctypes how often nbdist reads each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SUCCESS 0
#define ERROR_INVALID_ARGUMENT 2
#define ERROR_NOT_SUPPORTED 3

typedef struct { unsigned int gpu, memory; } utilization_t;
typedef struct { unsigned long long total, free, used; } memory_t;

unsigned long long fake_nvml_power_calls = 0;
unsigned long long fake_nvml_energy_calls = 0;

static int g_devices = 2;
static long long g_t0_ns = 0;
static char g_no_energy[256], g_no_power[256];

static int listed(const char *list, int index) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s", list);
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
    if (*tok && atoi(tok) == index) return 1;
  return 0;
}

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec - g_t0_ns) * 1e-9;
}

static int device_index(void *dev) { return (int)(long)dev - 1; }

int nvmlInit_v2(void) {
  const char *e = getenv("FAKE_NVML_INIT_ERROR");
  if (e && *e) return atoi(e);
  e = getenv("FAKE_NVML_DEVICES");
  g_devices = e && *e ? atoi(e) : 2;
  e = getenv("FAKE_NVML_T0_NS");
  g_t0_ns = e && *e ? atoll(e) : 0;
  e = getenv("FAKE_NVML_NO_ENERGY");
  snprintf(g_no_energy, sizeof g_no_energy, "%s", e ? e : "");
  e = getenv("FAKE_NVML_NO_POWER");
  snprintf(g_no_power, sizeof g_no_power, "%s", e ? e : "");
  return SUCCESS;
}

int nvmlShutdown(void) { return SUCCESS; }

const char *nvmlErrorString(int rc) {
  switch (rc) {
    case SUCCESS: return "Success";
    case ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case ERROR_NOT_SUPPORTED: return "Not Supported";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
  }
}

int nvmlSystemGetDriverVersion(char *buf, unsigned int n) {
  snprintf(buf, n, "999.99-fake");
  return SUCCESS;
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
  *count = (unsigned int)g_devices;
  return SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **dev) {
  if ((int)index >= g_devices) return ERROR_INVALID_ARGUMENT;
  *dev = (void *)(long)(index + 1); /* never NULL */
  return SUCCESS;
}

int nvmlDeviceGetUUID(void *dev, char *buf, unsigned int n) {
  snprintf(buf, n, "GPU-fa4e0000-0000-4000-8000-%012d", device_index(dev));
  return SUCCESS;
}

int nvmlDeviceGetName(void *dev, char *buf, unsigned int n) {
  snprintf(buf, n, "Fake GPU %d", device_index(dev));
  return SUCCESS;
}

int nvmlDeviceGetPowerUsage(void *dev, unsigned int *mw) {
  int i = device_index(dev);
  if (listed(g_no_power, i)) return ERROR_NOT_SUPPORTED;
  double t = seconds();
  *mw = (unsigned int)((100.0 + 50.0 * i + 10.0 * t) * 1000.0 + 0.5);
  __atomic_fetch_add(&fake_nvml_power_calls, 1, __ATOMIC_SEQ_CST);
  return SUCCESS;
}

int nvmlDeviceGetTotalEnergyConsumption(void *dev, unsigned long long *mj) {
  int i = device_index(dev);
  if (listed(g_no_energy, i)) return ERROR_NOT_SUPPORTED;
  double t = seconds();
  *mj = (unsigned long long)((1000.0 + (100.0 + 50.0 * i) * t + 5.0 * t * t) * 1000.0 + 0.5);
  __atomic_fetch_add(&fake_nvml_energy_calls, 1, __ATOMIC_SEQ_CST);
  return SUCCESS;
}

int nvmlDeviceGetUtilizationRates(void *dev, utilization_t *u) {
  u->gpu = 50 + 10 * device_index(dev);
  u->memory = 30;
  return SUCCESS;
}

int nvmlDeviceGetMemoryInfo(void *dev, memory_t *m) {
  m->total = 80ULL << 30;
  m->used = (unsigned long long)(1 + device_index(dev)) << 30;
  m->free = m->total - m->used;
  return SUCCESS;
}

int nvmlDeviceGetTemperature(void *dev, int sensor, unsigned int *t) {
  *t = 40 + device_index(dev);
  return SUCCESS;
}
