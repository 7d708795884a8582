#include "ddp/adamw.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>

#include "ddp/collectives.h"

namespace nbdist::ddp {

namespace {

// One AdamW update of `p` (moments m, v; step counts already advanced) from `g`, through torch's
// fused kernel; where it has none (device/dtype), the same math unfused, and `fused` turns off.
// found_inf (defined): nonzero skips the update, on the device for the fused kernel (its own
// gate), on the host for the fallback (which reads the step counts there anyway).
void adamw_update(const std::vector<at::Tensor>& p, const std::vector<at::Tensor>& g,
                  const std::vector<at::Tensor>& m, const std::vector<at::Tensor>& v,
                  const std::vector<at::Tensor>& steps, double lr, double wd,
                  const TrainConfig& cfg, const at::Tensor& found_inf, bool& fused) {
  if (p.empty()) return;
  if (fused) {
    try {
      at::_fused_adamw_(p, g, m, v, {}, steps, lr, cfg.beta1, cfg.beta2, wd, cfg.eps, false, false,
                        std::nullopt,
                        found_inf.defined() ? std::optional<at::Tensor>(found_inf) : std::nullopt);
      return;
    } catch (const c10::NotImplementedError&) {
      fused = false;
    }
  }
  if (found_inf.defined() && found_inf.item<double>() != 0) return;
  for (size_t i = 0; i < p.size(); ++i) {
    const double t = steps[i].item<double>();
    p[i].mul_(1 - lr * wd);
    m[i].lerp_(g[i], 1 - cfg.beta1);
    v[i].mul_(cfg.beta2).addcmul_(g[i], g[i], 1 - cfg.beta2);
    const double bc1 = 1 - std::pow(cfg.beta1, t);
    const double bc2 = 1 - std::pow(cfg.beta2, t);
    auto denom = (v[i].sqrt() / std::sqrt(bc2)).add_(cfg.eps);
    p[i].addcdiv_(m[i], denom, -lr / bc1);
  }
}

// The update's operands, split by weight decay (index 1: tensors of >= 2 dims).
struct Groups {
  std::vector<at::Tensor> p[2], g[2], m[2], v[2], steps[2];
  void add(bool decay, const at::Tensor& value, const at::Tensor& grad, const at::Tensor& exp_avg,
           const at::Tensor& exp_avg_sq, const at::Tensor& step) {
    p[decay].push_back(value);
    g[decay].push_back(grad);
    m[decay].push_back(exp_avg);
    v[decay].push_back(exp_avg_sq);
    steps[decay].push_back(step);
  }
  void update(double lr, const TrainConfig& cfg, const at::Tensor& found_inf, bool& fused) const {
    adamw_update(p[1], g[1], m[1], v[1], steps[1], lr, cfg.weight_decay, cfg, found_inf, fused);
    adamw_update(p[0], g[0], m[0], v[0], steps[0], lr, 0.0, cfg, found_inf, fused);
  }
};

std::string key(const char* what, size_t i) { return std::string("adamw.") + what + "." + std::to_string(i); }

void check_shape(const CheckpointGet& get, const std::string& path, const std::string& k,
                 at::IntArrayRef want) {
  const auto& src = get(k);
  if (src.sizes() != want)
    throw DDPError(ErrorKind::kInvalidInput, "checkpoint '" + path + "': '" + k + "' has shape " +
                                                 c10::str(src.sizes()) + " but the model's is " +
                                                 c10::str(want));
}

// Advances the step count of every parameter with a gradient; returns them, to take a skipped
// step back after the update.
std::vector<at::Tensor> advance_steps(const std::vector<at::Tensor>& params,
                                      const std::vector<at::Tensor>& steps) {
  std::vector<at::Tensor> live;
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].grad().defined()) live.push_back(steps[i]);
  if (!live.empty()) at::_foreach_add_(live, 1);
  return live;
}

void undo_skipped(const std::vector<at::Tensor>& live, const at::Tensor& found_inf) {
  if (found_inf.defined() && !live.empty())
    at::_foreach_sub_(live, std::vector<at::Tensor>(live.size(), found_inf));
}

}  // namespace

AdamWBase::AdamWBase(std::vector<at::Tensor> params) : params_(std::move(params)) {
  for (const auto& p : params_) steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
}

void AdamWBase::check(const CheckpointGet& get, const std::string& path) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    check_shape(get, path, key("exp_avg", i), params_[i].sizes());
    check_shape(get, path, key("exp_avg_sq", i), params_[i].sizes());
    check_shape(get, path, key("step", i), steps_[i].sizes());
  }
}

// ---- AdamW: whole on every rank ----

AdamW::AdamW(const std::vector<at::Tensor>& params, const TrainConfig& cfg)
    : AdamWBase(params), cfg_(cfg) {
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
  }
}

std::vector<at::Tensor> AdamW::grads() {
  std::vector<at::Tensor> out;
  for (const auto& p : params_)
    if (p.grad().defined()) out.push_back(p.grad());
  return out;
}

void AdamW::step(double lr, const at::Tensor& found_inf) {
  at::NoGradGuard no_grad;
  const auto live = advance_steps(params_, steps_);
  Groups groups;
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].grad().defined())
      groups.add(params_[i].dim() >= 2, params_[i], params_[i].grad(), exp_avg_[i],
                 exp_avg_sq_[i], steps_[i]);
  groups.update(lr, cfg_, found_inf, fused_);
  undo_skipped(live, found_inf);
}

void AdamW::save(TensorMap* ck) {
  if (!ck) return;
  for (size_t i = 0; i < params_.size(); ++i) {
    (*ck)[key("exp_avg", i)] = exp_avg_[i];
    (*ck)[key("exp_avg_sq", i)] = exp_avg_sq_[i];
    (*ck)[key("step", i)] = steps_[i];
  }
}

void AdamW::load(const CheckpointGet& get) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    exp_avg_[i].copy_(get(key("exp_avg", i)));
    exp_avg_sq_[i].copy_(get(key("exp_avg_sq", i)));
    steps_[i].copy_(get(key("step", i)));
  }
}

// ---- ShardedAdamW: each rank its slice of every bucket ----

std::string ShardedAdamW::why_not(const Reducer& reducer) {
  const auto& params = reducer.params();
  const auto& names = reducer.names();
  std::map<const void*, size_t> storage_of;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].is_contiguous())
      return "parameter '" + names[i] +
             "' is not contiguous (channels_last?), so its slices would not line up with its "
             "gradient's";
    // Each parameter moves into a buffer of its own: two that share memory would come apart.
    const auto [it, fresh] = storage_of.emplace(params[i].storage().data(), i);
    if (!fresh)
      return "parameters '" + names[it->second] + "' and '" + names[i] +
             "' share memory, which sharding would split; tie them as one Parameter "
             "(b.weight = a.weight)";
  }
  return "";
}

ShardedAdamW::ShardedAdamW(Reducer& reducer, const TrainConfig& cfg)
    : AdamWBase(reducer.params()), reducer_(reducer), cfg_(cfg) {
  NBDIST_CHECK(reducer.sharded(), "the reducer reduce-scatters before the AdamW is sharded");
  at::NoGradGuard no_grad;
  const int64_t world = reducer.world_size(), rank = reducer.rank();
  for (auto& span : reducer.bucket_spans()) {
    Slice s;
    s.span = span;
    const auto n = span.buffer.numel();
    s.length = n / world;
    s.begin = rank * s.length;
    s.flat = at::zeros({n}, params_[span.params[0]].options().requires_grad(false));
    s.exp_avg = at::zeros({s.length}, s.flat.options());
    s.exp_avg_sq = at::zeros({s.length}, s.flat.options());
    for (size_t k = 0; k < span.params.size(); ++k) {
      const auto i = span.params[k];
      const auto o = span.offsets[k];
      auto& p = params_[i];
      // The parameter's storage moves into the flat buffer (the tensor object, its autograd
      // identity and its hooks stay), so that the all-gather lands in the parameters themselves.
      auto view = s.flat.narrow(0, o, p.numel()).view(p.sizes());
      view.copy_(p);
      p.set_data(view);
      const auto lo = std::max(o, s.begin), hi = std::min(o + p.numel(), s.begin + s.length);
      if (lo >= hi) continue;
      Segment seg;
      seg.param = i;
      seg.begin = lo - o;
      seg.end = hi - o;
      seg.value = s.flat.narrow(0, lo, hi - lo);
      seg.grad = span.buffer.narrow(0, lo, hi - lo);
      seg.exp_avg = s.exp_avg.narrow(0, lo - s.begin, hi - lo);
      seg.exp_avg_sq = s.exp_avg_sq.narrow(0, lo - s.begin, hi - lo);
      s.segments.push_back(std::move(seg));
    }
    slices_.push_back(std::move(s));
  }
  // About equal bytes per group, in update order.
  constexpr int64_t kGroups = 4;
  int64_t total = 0, filled = 0;
  for (const auto& s : slices_) total += s.length;
  for (size_t k = slices_.size(); k-- > 0;) {
    if (groups_.empty() || filled * kGroups >= total * static_cast<int64_t>(groups_.size()))
      groups_.emplace_back();
    groups_.back().push_back(k);
    filled += slices_[k].length;
  }
}

ShardedAdamW::~ShardedAdamW() {
  try {
    wait();
  } catch (...) {  // an error is already on its way out (the process group's, most likely)
  }
}

std::vector<at::Tensor> ShardedAdamW::grads() {
  std::vector<at::Tensor> out;
  const auto spans = reducer_.bucket_spans();
  NBDIST_CHECK(spans.size() == slices_.size(), "the buckets kept their layout");
  for (size_t b = 0; b < slices_.size(); ++b) {
    NBDIST_CHECK(spans[b].buffer.is_same(slices_[b].span.buffer), "the buckets kept their buffers");
    for (const auto& seg : slices_[b].segments)
      if (params_[seg.param].grad().defined()) out.push_back(seg.grad);
  }
  return out;
}

void ShardedAdamW::reduce_norm(at::Tensor& norm, at::Tensor& found_inf) {
  // [sum of squares, found-inf count] over all ranks, in one all-reduce
  auto parts = norm.to(at::kFloat).square().reshape({1});
  if (found_inf.defined()) parts = at::cat({parts, found_inf.to(at::kFloat).reshape({1})});
  std::vector<at::Tensor> v{parts};
  reducer_.process_group()->allreduce(v)->wait();
  norm = v[0][0].sqrt();
  if (found_inf.defined()) found_inf.copy_(v[0][1].clamp_max(1.0));
}

void ShardedAdamW::step(double lr, const at::Tensor& found_inf) {
  at::NoGradGuard no_grad;
  const auto live = advance_steps(params_, steps_);
  const auto& pg = reducer_.process_group();
  // Last bucket first: the next forward needs the first layers first.
  for (const auto& group : groups_) {
    Groups ops;
    std::vector<at::Tensor> whole, mine;
    for (const auto k : group) {
      auto& s = slices_[k];
      for (const auto& seg : s.segments)
        if (params_[seg.param].grad().defined())
          ops.add(params_[seg.param].dim() >= 2, seg.value, seg.grad, seg.exp_avg, seg.exp_avg_sq,
                  steps_[seg.param]);
      whole.push_back(s.flat);
      mine.push_back(s.flat.narrow(0, s.begin, s.length));
    }
    ops.update(lr, cfg_, found_inf, fused_);
    gathers_.push_back(all_gather_flat_coalesced(pg, whole, mine));
  }
  undo_skipped(live, found_inf);
}

void ShardedAdamW::wait() {
  auto works = std::move(gathers_);
  gathers_.clear();
  for (auto& work : works) work->wait();
}

void ShardedAdamW::save(TensorMap* ck) {
  wait();
  const auto& pg = reducer_.process_group();
  for (auto& s : slices_) {
    for (auto* part : {&s.exp_avg, &s.exp_avg_sq}) {
      auto whole = at::empty({s.span.buffer.numel()}, part->options());
      all_gather_flat(pg, whole, *part)->wait();
      if (!ck) continue;
      const char* what = part == &s.exp_avg ? "exp_avg" : "exp_avg_sq";
      for (size_t k = 0; k < s.span.params.size(); ++k) {
        const auto i = s.span.params[k];
        (*ck)[key(what, static_cast<size_t>(i))] =
            whole.narrow(0, s.span.offsets[k], params_[i].numel()).view(params_[i].sizes());
      }
    }
  }
  if (!ck) return;
  for (size_t i = 0; i < params_.size(); ++i) (*ck)[key("step", i)] = steps_[i];
}

void ShardedAdamW::load(const CheckpointGet& get) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) steps_[i].copy_(get(key("step", i)));
  for (auto& s : slices_)
    for (auto& seg : s.segments) {
      const auto len = seg.end - seg.begin;
      seg.exp_avg.copy_(get(key("exp_avg", seg.param)).reshape(-1).narrow(0, seg.begin, len));
      seg.exp_avg_sq.copy_(get(key("exp_avg_sq", seg.param)).reshape(-1).narrow(0, seg.begin, len));
    }
}

}  // namespace nbdist::ddp
