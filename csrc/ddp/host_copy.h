#pragma once

// A tensor's value on the host, read later without making any stream wait for it: the copy goes
// into pinned memory on the current stream of the tensor's device, and an event marks it done.
// A CPU tensor is its own host copy.

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>

namespace nbdist::ddp {

class HostCopy {
 public:
  HostCopy() = default;
  explicit HostCopy(const at::Tensor& t) {
    if (t.is_cpu()) {
      host_ = t;
      return;
    }
    host_ = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
    host_.copy_(t, /*non_blocking=*/true);
    done_.emplace(t.device().type());
    done_->record(c10::impl::VirtualGuardImpl(t.device().type()).getStream(t.device()));
  }
  bool defined() const { return host_.defined(); }
  // Waits for the copy (only for it), then the host tensor.
  const at::Tensor& get() {
    if (done_) done_->synchronize();
    return host_;
  }

 private:
  at::Tensor host_;
  std::optional<c10::Event> done_;
};

}  // namespace nbdist::ddp
