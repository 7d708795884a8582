#include "ddp/reducer.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <sstream>
#include <unordered_set>

#include "ddp/collectives.h"

namespace nbdist::ddp {

namespace {

// ReducerOptions::transport values; the index is what verify_and_broadcast compares across ranks.
const char* const kTransports[] = {"auto", "nccl", "peer", "host"};

int64_t transport_code(const std::string& transport) {
  return std::find(std::begin(kTransports), std::end(kTransports), transport) -
         std::begin(kTransports);
}

constexpr int kSigDims = 8;  // dims recorded exactly in the shape signature; the rest are hashed
constexpr int kSigWidth = kSigDims + 3;  // ndim, dims..., hash of extra dims, dtype

std::string shape_str(const int64_t* row) {
  std::ostringstream s;
  s << "[";
  for (int64_t d = 0; d < std::min<int64_t>(row[0], kSigDims); ++d)
    s << (d ? ", " : "") << row[1 + d];
  if (row[0] > kSigDims) s << ", ...";
  s << "] " << c10::toString(static_cast<at::ScalarType>(row[kSigDims + 2]));
  return s.str();
}

// One broadcast per dtype: flatten, broadcast from `root`, copy back.
void broadcast_coalesced(const c10::intrusive_ptr<::c10d::ProcessGroup>& pg,
                         const std::vector<at::Tensor>& tensors, int root = 0) {
  at::NoGradGuard no_grad;
  std::vector<at::ScalarType> types;
  for (const auto& t : tensors)
    if (std::find(types.begin(), types.end(), t.scalar_type()) == types.end())
      types.push_back(t.scalar_type());
  for (auto type : types) {
    std::vector<at::Tensor> group, flat;
    for (const auto& t : tensors)
      if (t.scalar_type() == type) {
        group.push_back(t);
        flat.push_back(t.reshape(-1));
      }
    std::vector<at::Tensor> buf{at::cat(flat)};
    ::c10d::BroadcastOptions opts;
    opts.rootRank = root;
    pg->broadcast(buf, opts)->wait();
    int64_t offset = 0;
    for (auto& t : group) {
      t.copy_(buf[0].narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

}  // namespace

Reducer::Reducer(std::vector<at::Tensor> params, std::vector<std::string> names,
                 c10::intrusive_ptr<::c10d::ProcessGroup> pg, ReducerOptions options)
    : params_(std::move(params)), names_(std::move(names)), pg_(std::move(pg)), options_(options) {
  if (!pg_) throw DDPError(ErrorKind::kInvalidInput, "the process group is not initialized");
  if (params_.empty())
    throw DDPError(ErrorKind::kInvalidInput, "the module has no parameters that require grad");
  NBDIST_CHECK(names_.size() == params_.size(), "one name per parameter");
  if (transport_code(options_.transport) == static_cast<int64_t>(std::size(kTransports)))
    throw DDPError(
        ErrorKind::kInvalidInput,
        "transport must be 'auto', 'nccl', 'peer' or 'host', got '" + options_.transport + "'");
  // Checked on every world size, one rank included, where no copy engine is ever set up.
  if ((options_.transport == "peer" || options_.transport == "host") && !params_[0].is_cuda())
    throw DDPError(ErrorKind::kInvalidInput, "transport='" + options_.transport +
                                                 "' needs CUDA parameters; these are on " +
                                                 params_[0].device().str());
  rank_ = pg_->getRank();
  world_size_ = pg_->getSize();
  // NCCL averages in the collective itself; Gloo has no AVG, so buckets are pre-divided there.
  use_avg_op_ = params_[0].is_cuda() && pg_->getBackendName().find("nccl") != std::string::npos;
  ready_.assign(params_.size(), 0);
  unused_.assign(params_.size(), 0);
  used_.assign(params_.size(), 0);
  saved_grad_.resize(params_.size());

  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].requires_grad() || !params_[i].is_leaf())
      throw DDPError(ErrorKind::kInvalidInput,
                     "parameter '" + names_[i] + "' must be a leaf tensor that requires grad");
    auto acc = torch::autograd::impl::grad_accumulator(params_[i]);
    const auto index = static_cast<int64_t>(i);
    hook_keys_.push_back(
        acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
            [this, index](const torch::autograd::variable_list& outputs,
                          const torch::autograd::variable_list& /*inputs*/) {
              on_grad_ready(index);
              return outputs;
            })));
    auto pre =
        std::make_unique<LambdaPreHook>([this, index](const torch::autograd::variable_list& grads) {
          if (grads.empty() || !on_grad_arriving(index, grads[0])) return grads;
          return torch::autograd::variable_list{at::Tensor()};
        });
    pre_hooks_.push_back(pre.get());
    acc->add_pre_hook(std::move(pre));
    param_of_acc_[acc.get()] = index;
    accumulators_.push_back(std::move(acc));
  }
  emb_of_.assign(params_.size(), -1);
  emb_dense_only_.assign(params_.size(), 0);
  self_ = std::make_shared<std::atomic<Reducer*>>(this);
  // Reverse registration order approximates the order in which backward produces gradients.
  std::vector<int64_t> order(params_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(order.size() - 1 - i);
  install_buckets(plan_buckets(order));
}

Reducer::~Reducer() {
  self_->store(nullptr);  // hooks left on graphs that were never run back through do nothing
  for (size_t i = 0; i < accumulators_.size(); ++i) {
    accumulators_[i]->del_post_hook(hook_keys_[i]);
    auto& pre = accumulators_[i]->pre_hooks();
    pre.erase(std::remove_if(pre.begin(), pre.end(),
                             [&](const auto& h) { return h.get() == pre_hooks_[i]; }),
              pre.end());
  }
}

void Reducer::verify_and_broadcast(const std::vector<at::Tensor>& buffers,
                                   const std::vector<std::string>& buffer_names) {
  std::vector<at::Tensor> all(params_);
  all.insert(all.end(), buffers.begin(), buffers.end());
  std::vector<std::string> all_names(names_);
  all_names.insert(all_names.end(), buffer_names.begin(), buffer_names.end());
  const auto device = params_[0].device();
  const auto i64 = at::TensorOptions().dtype(at::kLong);

  // The counts first (a signature gather needs equal sizes on every rank), with the transport:
  // setting up the copy engines is collective, so every rank must ask for the same one.
  auto count =
      at::tensor({static_cast<int64_t>(all.size()), transport_code(options_.transport)}, i64);
  auto counts = all_gather(pg_, count, device);
  const auto n0 = counts[0][0].item<int64_t>();
  for (int r = 1; r < world_size_; ++r) {
    const auto t = counts[r][1].item<int64_t>(), t0 = counts[0][1].item<int64_t>();
    if (t != t0)
      throw DDPError(ErrorKind::kInvalidInput,
                     std::string("transport differs across ranks: rank ") + std::to_string(r) +
                         " asked for '" + kTransports[t] + "', rank 0 for '" + kTransports[t0] +
                         "'; pass the same transport on every rank");
    const auto n = counts[r][0].item<int64_t>();
    if (n != n0)
      throw DDPError(ErrorKind::kInvalidInput,
                     "the model differs across ranks: rank " + std::to_string(r) + " has " +
                         std::to_string(n) + " parameters and buffers, rank 0 has " +
                         std::to_string(n0) +
                         "; build the same model on every rank before wrapping it in DDP");
  }
  auto sig = at::zeros({static_cast<int64_t>(all.size()), kSigWidth}, i64);
  auto acc = sig.accessor<int64_t, 2>();
  for (size_t i = 0; i < all.size(); ++i) {
    const auto sizes = all[i].sizes();
    acc[i][0] = static_cast<int64_t>(sizes.size());
    int64_t extra = 0;
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (d < static_cast<size_t>(kSigDims))
        acc[i][1 + d] = sizes[d];
      else
        extra = extra * 1000003 + sizes[d];
    }
    acc[i][kSigDims + 1] = extra;
    acc[i][kSigDims + 2] = static_cast<int64_t>(all[i].scalar_type());
  }
  auto sigs = all_gather(pg_, sig, device);
  auto ref = sigs[0].contiguous();
  for (int r = 1; r < world_size_; ++r) {
    auto other = sigs[r].contiguous();
    for (size_t i = 0; i < all.size(); ++i) {
      const int64_t* a = ref.data_ptr<int64_t>() + i * kSigWidth;
      const int64_t* b = other.data_ptr<int64_t>() + i * kSigWidth;
      if (!std::equal(a, a + kSigWidth, b)) {
        throw DDPError(ErrorKind::kInvalidInput,
                       "the model differs across ranks: '" + all_names[i] + "' is " + shape_str(b) +
                           " on rank " + std::to_string(r) + " but " + shape_str(a) +
                           " on rank 0; build the same model on every rank before wrapping it "
                           "in DDP");
      }
    }
  }
  broadcast_coalesced(pg_, all);
  // Only now that every rank is known to hold the same model and transport: the copy engines
  // (a collective set-up) take over the buckets, whose buffers they own.
  if (world_size_ > 1 && options_.transport != "nccl") {
    auto buckets = replan_buckets();
    create_copy_engines(buckets);
    if (copy_engines_) install_buckets(std::move(buckets));
  }
}

void Reducer::broadcast_buffers(const std::vector<at::Tensor>& buffers, int root) {
  if (root < 0 || root >= world_size_)
    throw DDPError(ErrorKind::kInvalidInput, "broadcast root " + std::to_string(root) +
                                                 " is not a rank of this group of " +
                                                 std::to_string(world_size_));
  if (world_size_ > 1 && !buffers.empty()) broadcast_coalesced(pg_, buffers, root);
}

void Reducer::set_joining(bool on, int64_t average_over) {
  std::lock_guard<std::mutex> lock(mutex_);
  joining_ = on;
  average_over_ = on ? average_over : 0;
}

void Reducer::shadow_backward() {
  std::lock_guard<std::mutex> lock(mutex_);
  NBDIST_CHECK(finished_ && joining_, "a shadow backward runs in join(), after a complete one");
  at::NoGradGuard no_grad;
  // What an armed backward starts from, with no embedding exchange (off in join()) and nothing
  // used: this rank has joined and contributes zeros to every bucket, not what its last
  // micro-steps left there.
  begin_round_locked(true);
  finished_ = false;
  std::fill(used_.begin(), used_.end(), 0);
  for (auto& b : buckets_) b.buffer.zero_();
  for (size_t i = 0; i < params_.size(); ++i) mark_ready_locked(static_cast<int64_t>(i));
  // The same collectives as finalize_backward: the buckets (and the used-bitmap) complete.
  wait_buckets_locked();
  if (used_work_) used_work_->wait();
  used_work_.reset();
  std::fill(used_.begin(), used_.end(), 0);
  armed_ = false;
  reduced_ = true;
  end_round_locked();
}

void Reducer::begin_round_locked(bool sync) {
  armed_ = sync;
  reduced_ = false;
  callback_queued_ = false;
  ++emb_serial_;  // hooks left on an earlier graph pass its gradients through untouched
  emb_.clear();
  std::fill(emb_of_.begin(), emb_of_.end(), -1);
  if (!sync) return;
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& b : buckets_) b.pending = static_cast<int64_t>(b.params.size()), b.work.reset();
  next_bucket_ = 0;
  used_work_.reset();
  for (auto& t : saved_grad_) t.reset();
  std::fill(unused_.begin(), unused_.end(), 0);
}

void Reducer::wait_buckets_locked() {
  if (copy_engines_ && next_bucket_ > 0) copy_engines_->finish();
  for (auto& b : buckets_)
    if (b.work) b.work->wait();
}

void Reducer::end_round_locked() {
  ++sync_rounds_;
  finished_ = true;
  if (!rebuilt_) rebuild_pending_ = true;
}

std::vector<Reducer::Bucket> Reducer::plan_buckets(const std::vector<int64_t>& order) const {
  std::vector<Bucket> buckets;
  int64_t cap = options_.first_bucket_bytes;
  int64_t bytes = 0;
  for (int64_t index : order) {
    const auto& p = params_[index];
    const bool fits = !buckets.empty() && !buckets.back().params.empty() &&
                      bytes + static_cast<int64_t>(p.numel() * p.element_size()) <= cap &&
                      params_[buckets.back().params[0]].scalar_type() == p.scalar_type() &&
                      params_[buckets.back().params[0]].device() == p.device();
    if (!fits) {
      if (!buckets.empty()) cap = options_.bucket_cap_bytes;  // only the first bucket is small
      buckets.emplace_back();
      bytes = 0;
    }
    auto& b = buckets.back();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(index);
    bytes += static_cast<int64_t>(p.numel() * p.element_size());
  }
  return buckets;
}

std::vector<Reducer::Bucket> Reducer::replan_buckets() const {
  std::vector<int64_t> order;
  for (const auto& b : buckets_) order.insert(order.end(), b.params.begin(), b.params.end());
  return plan_buckets(order);
}

void Reducer::install_buckets(std::vector<Bucket> buckets) {
  at::NoGradGuard no_grad;
  bucket_of_.assign(params_.size(), -1);
  slot_of_.assign(params_.size(), -1);
  for (size_t bi = 0; bi < buckets.size(); ++bi) {
    auto& b = buckets[bi];
    const auto& first = params_[b.params[0]];
    if (copy_engines_)
      b.buffer = copy_engines_->bucket(static_cast<int64_t>(bi)).zero_();
    else {
      int64_t n = b.offsets.back() + params_[b.params.back()].numel();
      if (shard_) n = (n + world_size_ - 1) / world_size_ * world_size_;  // equal slices
      b.buffer = at::zeros({n}, first.options().requires_grad(false));
    }
    for (size_t s = 0; s < b.params.size(); ++s) {
      const auto index = b.params[s];
      bucket_of_[index] = static_cast<int64_t>(bi);
      slot_of_[index] = static_cast<int64_t>(s);
    }
  }
  buckets_ = std::move(buckets);
  // Gradients accumulated so far (e.g. under no_sync) move into the new buckets.
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& grad = params_[i].mutable_grad();
    if (!grad.defined()) continue;
    auto view = grad_view(static_cast<int64_t>(i));
    view.copy_(grad);
    if (options_.gradient_as_bucket_view) grad = view;
  }
}

void Reducer::create_copy_engines(const std::vector<Bucket>& buckets) {
  const auto& transport = options_.transport;
  const auto device = params_[0].device();
  if (!device.is_cuda()) return;  // 'peer'/'host' on CPU were refused by the constructor
  if (copy_engines_) {
    // Rebuilding: every rank drops its mappings of the old buffers before anyone frees them.
    copy_engines_->drain();
    copy_engines_.reset();
    std::vector<at::Tensor> v{at::zeros({1}, params_[0].options().requires_grad(false))};
    pg_->allreduce(v)->wait();
    v[0].cpu();
  }
  std::vector<BucketLayout> layouts;
  for (const auto& b : buckets) {
    BucketLayout layout;
    layout.numel = b.offsets.back() + params_[b.params.back()].numel();
    layout.dtype = params_[b.params[0]].scalar_type();
    layouts.push_back(layout);
  }
  for (const auto& layout : gather_layouts(static_cast<int64_t>(layouts.size())))
    layouts.push_back(layout);
  copy_engines_ = CopyEngineAllreduce::create(pg_, device, layouts, transport, &transport_note_);
  if (!copy_engines_ && transport != "auto")
    throw DDPError(ErrorKind::kInvalidInput, "transport='" + transport +
                                                 "' is not available: " + transport_note_ +
                                                 "; use transport='auto' or 'nccl'");
  if (copy_engines_) transport_note_.clear();
}

std::string Reducer::transport() const {
  return copy_engines_ ? copy_engines_->path() : pg_->getBackendName();
}

at::Tensor Reducer::grad_view(int64_t index) {
  auto& b = buckets_[bucket_of_[index]];
  const auto& p = params_[index];
  return b.buffer.narrow(0, b.offsets[slot_of_[index]], p.numel()).view(p.sizes());
}

std::string Reducer::set_sharded(bool on) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (on == shard_) return "";
  if (on && copy_engines_)
    return std::string("the buckets are averaged by the copy engines (transport='") +
           copy_engines_->path() +
           "'), which have no reduce-scatter";
  if (on && joining_) return "join() is on";
  if (on && world_size_ == 1) return "there is one rank";
  // A failed backward: the next forward raises its error (prepare_forward).
  if (on && !finished_) return "the previous backward pass did not reduce every gradient";
  // A forward with grad enabled whose backward never came (a look at the loss before train())
  // leaves the reducer armed; the buckets below are new, so that backward could no longer be
  // averaged: one through that forward now raises (on_grad_arriving) rather than staying local.
  if (armed_) armed_ = false, reduced_ = true;
  shard_ = on;
  // Padded buffers (or unpadded again); the layout is kept, so that the optimizer's slices hold.
  rebuilt_ = true;
  rebuild_pending_ = false;
  install_buckets(replan_buckets());
  return "";
}

std::vector<Reducer::BucketSpan> Reducer::bucket_spans() const {
  std::vector<BucketSpan> out;
  for (const auto& b : buckets_) out.push_back({b.buffer, b.params, b.offsets});
  return out;
}

std::vector<std::vector<int64_t>> Reducer::bucket_indices() const {
  std::vector<std::vector<int64_t>> out;
  for (const auto& b : buckets_) out.push_back(b.params);
  return out;
}

void Reducer::prepare_forward() {
  if (!finished_) {
    throw DDPError(ErrorKind::kFailure,
                   "the previous backward pass did not reduce every gradient (rank " +
                       std::to_string(rank_) + "); see the error it raised");
  }
  if (rebuild_pending_ && !rebuilt_) {
    // Rank 0's observed order wins, so that every rank builds identical buckets.
    std::vector<char> seen(params_.size(), 0);
    std::vector<int64_t> order;
    for (auto i : arrival_)
      if (!seen[i]) seen[i] = 1, order.push_back(i);
    for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i)
      if (!seen[i]) order.push_back(i);
    auto t = at::tensor(order, at::TensorOptions().dtype(at::kLong)).to(params_[0].device());
    std::vector<at::Tensor> v{t};
    ::c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    if (world_size_ > 1) pg_->broadcast(v, opts)->wait();
    auto cpu = v[0].cpu();
    std::vector<int64_t> agreed(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel());
    auto buckets = plan_buckets(agreed);
    if (copy_engines_) create_copy_engines(buckets);  // new layout, new shared buffers
    install_buckets(std::move(buckets));
    rebuilt_ = true;
    rebuild_pending_ = false;
    emb_regrow_ = false;
  }
  if (emb_regrow_) {
    // Same buckets, bigger gather buffers: the copy engines are rebuilt (a collective, reached
    // by every rank at its next forward) and the gradients so far move into the new buffers.
    emb_regrow_ = false;
    auto buckets = replan_buckets();
    create_copy_engines(buckets);
    install_buckets(std::move(buckets));
  }
}

void Reducer::prepare_for_backward(bool sync, const std::vector<at::Tensor>& outputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  begin_round_locked(sync);
  if (!sync) return;
  bool embeddings = embeddings_active();
  if (embeddings && sizes_.work) {
    // A forward whose backward has not come yet (two forwards, one backward): its hooks are
    // stale now and pass gradients through, so this round takes the dense path throughout.
    // Every rank runs the same forwards, so every rank skips alike.
    sizes_ = SizeGather();
    embeddings = false;
  }
  if (!options_.find_unused_parameters && !embeddings) return;
  Producers producers;
  std::unordered_set<torch::autograd::Node*> seen;
  walk_graph(outputs, embeddings ? &producers : nullptr, &seen);
  if (options_.find_unused_parameters)
    // Every AccumulateGrad node not reached is an unused param.
    for (size_t i = 0; i < params_.size(); ++i) unused_[i] = !seen.count(accumulators_[i].get());
  if (embeddings) plan_embedding_uses(producers);
}

bool Reducer::wants_outputs() const {
  return options_.find_unused_parameters || embeddings_active();
}

void Reducer::walk_graph(const std::vector<at::Tensor>& outputs, Producers* producers,
                         std::unordered_set<torch::autograd::Node*>* seen) const {
  if (producers) producers->assign(params_.size(), {});
  std::vector<torch::autograd::Node*> stack;
  for (const auto& out : outputs) {
    if (!out.defined() || !out.requires_grad()) continue;
    auto fn = torch::autograd::impl::gradient_edge(out).function;
    if (!fn) continue;
    // An output that is a parameter itself: the root feeds its AccumulateGrad (no node to hook).
    auto direct = param_of_acc_.find(fn.get());
    if (producers && direct != param_of_acc_.end())
      (*producers)[direct->second].emplace_back(nullptr, 0);
    if (seen->insert(fn.get()).second) stack.push_back(fn.get());
  }
  while (!stack.empty()) {
    auto* node = stack.back();
    stack.pop_back();
    const auto& edges = node->next_edges();
    for (size_t k = 0; k < edges.size(); ++k) {
      auto* next = edges[k].function.get();
      if (!next) continue;
      if (producers) {
        auto it = param_of_acc_.find(next);
        if (it != param_of_acc_.end())
          (*producers)[it->second].emplace_back(node, static_cast<int64_t>(k));
      }
      if (seen->insert(next).second) stack.push_back(next);
    }
  }
}

void Reducer::on_grad_ready(int64_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (options_.find_unused_parameters) used_[index] = 1;
  if (!armed_) return;
  at::NoGradGuard no_grad;
  begin_backward_locked();
  if (emb_of_[index] >= 0) {
    // An embedding weight: its dense parts went into the bucket from their producers' hooks and
    // its lookups' gradients are exchanged as rows; what AccumulateGrad received from outside
    // the forward was kept aside by its pre-hook. Ready already, unless some producer was not
    // part of this backward.
    if (!ready_[index]) {
      if (!rebuilt_) arrival_.push_back(index);
      mark_ready_locked(index);
    }
    return;
  }
  auto& grad = params_[index].mutable_grad();
  auto view = grad_view(index);
  // After zero_grad(set_to_none=True) AccumulateGrad installs a fresh tensor: move it in. One
  // rank leaves .grad as AccumulateGrad made it (nothing to average), like a plain loop.
  if (world_size_ > 1 && !grad.is_alias_of(view)) {
    view.copy_(grad);
    if (options_.gradient_as_bucket_view) grad = view;
  }
  if (!rebuilt_) arrival_.push_back(index);
  mark_ready_locked(index);
}

void Reducer::begin_backward_locked() {
  if (callback_queued_) return;
  callback_queued_ = true;
  finished_ = false;
  torch::autograd::Engine::get_default_engine().queue_callback([this] { finalize_backward(); });
  // Params unused here are ready from the start and contribute zeros (or what no_sync
  // accumulated) to ranks that did use them; .grad itself is only rebound in finalize_backward,
  // once the used-bitmap says whether any rank used them.
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!unused_[i]) continue;
    auto view = grad_view(static_cast<int64_t>(i));
    const auto& grad = params_[i].grad();
    if (world_size_ > 1) {  // one rank: .grad stays as it is (see on_grad_ready)
      if (!grad.defined())
        view.zero_();
      else if (!grad.is_alias_of(view))
        view.copy_(grad);
      else if (!used_[i])
        saved_grad_[i] = grad.clone();
    }
    mark_ready_locked(static_cast<int64_t>(i));
  }
  // Embedding weights used only by lookups have no dense part to wait for: their bucket holds
  // what .grad held (or zeros), and the lookups' rows are added at the end.
  for (auto& use : emb_) {
    if (use.dense_edges > 0) continue;
    prime_view_locked(use.param);
    if (!rebuilt_) arrival_.push_back(use.param);
    mark_ready_locked(use.param);
  }
}

void Reducer::mark_ready_locked(int64_t index) {
  if (ready_[index]) {
    throw DDPError(ErrorKind::kFailure,
                   "parameter '" + names_[index] +
                       "' received its gradient twice in one backward pass (reentrant "
                       "checkpointing or a parameter used by two graphs); use non-reentrant "
                       "checkpointing (use_reentrant=False)");
  }
  ready_[index] = 1;
  if (--buckets_[bucket_of_[index]].pending == 0) launch_ready_buckets_locked();
}

void Reducer::launch_ready_buckets_locked() {
  while (next_bucket_ < static_cast<int64_t>(buckets_.size()) &&
         buckets_[next_bucket_].pending == 0) {
    auto& b = buckets_[next_bucket_++];
    ++allreduce_count_;
    if (copy_engines_) {
      copy_engines_->launch(next_bucket_ - 1, static_cast<uint32_t>(sync_rounds_ + 1));
      continue;
    }
    // One rank: the bucket is its own average. The process group's collectives would still
    // cost the host their bookkeeping, which idled the GPU behind it (GPT-2 on one H200: 1.4 ms
    // a step, bench/results/ddp_one_rank_h200.json).
    if (world_size_ == 1) continue;
    // Pre-dividing (where the backend has no AVG) keeps the averaged sum in range (fp16) and
    // costs one pass over the bucket.
    if (!use_avg_op_) b.buffer.div_(world_size_);
    const auto op = ::c10d::ReduceOp(use_avg_op_ ? ::c10d::ReduceOp::AVG : ::c10d::ReduceOp::SUM);
    if (shard_) {
      ::c10d::ReduceScatterOptions opts;
      opts.reduceOp = op;
      const auto slice = b.buffer.numel() / world_size_;
      auto mine = b.buffer.narrow(0, rank_ * slice, slice);
      b.work = reduce_scatter_flat(pg_, mine, b.buffer, opts);
    } else {
      ::c10d::AllreduceOptions opts;
      opts.reduceOp = op;
      std::vector<at::Tensor> v{b.buffer};
      b.work = pg_->allreduce(v, opts);
    }
  }
  // Every param is ready once the last bucket is out, so used_ is final: one small collective,
  // issued after the buckets so that all ranks keep the same collective order.
  if (options_.find_unused_parameters && next_bucket_ == static_cast<int64_t>(buckets_.size()) &&
      !used_work_) {
    std::vector<int32_t> flags(used_.begin(), used_.end());
    used_map_ = at::tensor(flags, at::TensorOptions().dtype(at::kInt)).to(params_[0].device());
    std::vector<at::Tensor> v{used_map_};
    used_work_ = pg_->allreduce(v);
  }
}

void Reducer::finalize_backward() {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = false;
  reduced_ = true;
  std::vector<std::string> missing;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!ready_[i]) missing.push_back(names_[i]);
  // Some parameter got no gradient here (an error, below). The other ranks may have used it and
  // sent every bucket: this rank sends the rest too, as they stand, so that the collectives of
  // the ranks still line up (mismatched ones abort a Gloo process) and every rank can end with
  // an error rather than a crash or a hang.
  for (size_t i = 0; i < params_.size(); ++i)
    if (!ready_[i])
      prime_view_locked(static_cast<int64_t>(i)), mark_ready_locked(static_cast<int64_t>(i));
  // The embedding rows go out before the wait on the buckets, so that they need not queue
  // behind them; they are added to the averaged buckets after it.
  finish_embeddings_locked([this] { wait_buckets_locked(); });
  // join(divide_by_initial_world_size=False): the average over the ranks that have not joined
  // (those that have add zeros).
  if (average_over_ > 0 && average_over_ != world_size_) {
    at::NoGradGuard no_grad;
    for (auto& b : buckets_) b.buffer.mul_(static_cast<double>(world_size_) / average_over_);
  }
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 10; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 10) list += ", ... (" + std::to_string(missing.size()) + " in all)";
    // finished_ stays false: the next forward refuses to run with half-reduced gradients.
    throw DDPError(ErrorKind::kInvalidInput,
                   "rank " + std::to_string(rank_) +
                       ": these parameters received no gradient in this backward pass: " + list +
                       ". Pass find_unused_parameters=True to DDP, or set requires_grad=False on "
                       "parameters that do not take part in the loss");
  }
  std::vector<char> anyone_used(params_.size(), 1);
  if (options_.find_unused_parameters) {
    NBDIST_CHECK(used_work_, "the used-bitmap all-reduce follows the last bucket");
    used_work_->wait();
    used_work_.reset();
    auto counts = used_map_.cpu();
    for (size_t i = 0; i < params_.size(); ++i) anyone_used[i] = counts.data_ptr<int32_t>()[i] > 0;
    std::fill(used_.begin(), used_.end(), 0);
  }
  // Without unused params every .grad already is its bucket view (set by the hooks): nothing to
  // rebind, and the common path pays no per-parameter work after backward.
  const bool rebind =
      world_size_ > 1 && (options_.find_unused_parameters || !options_.gradient_as_bucket_view);
  at::NoGradGuard no_grad;
  for (size_t i = 0; rebind && i < params_.size(); ++i) {
    auto& grad = params_[i].mutable_grad();
    auto view = grad_view(static_cast<int64_t>(i));
    if (!anyone_used[i]) {
      // No rank used it: .grad stays as it was (None stays None), as in a single process.
      if (saved_grad_[i].defined()) view.copy_(saved_grad_[i]);
      saved_grad_[i].reset();
      continue;
    }
    saved_grad_[i].reset();
    if (grad.defined() && grad.is_alias_of(view)) continue;  // already holds the average
    if (options_.gradient_as_bucket_view)
      grad = view;
    else if (!grad.defined())
      grad = view.clone();
    else
      grad.copy_(view);
  }
  end_round_locked();
}

}  // namespace nbdist::ddp
