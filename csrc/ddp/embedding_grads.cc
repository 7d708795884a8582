// The reducer's embedding row exchange (ReducerOptions::embedding_rows).
//
// The gradient of an embedding weight W[rows, dim] looked up at n indices is zero except in the
// looked-up rows, and backward produces it last (the lookup is the first op of forward). Averaging
// it as a dense bucket moves rows x dim values after backward has ended; a tied output layer, whose
// part of the same gradient is ready at the very start of backward, waits for it too. Instead,
// for each backward:
//   * prepare_for_backward walks the graph and finds the EmbeddingBackward0 nodes that feed each
//     parameter's AccumulateGrad; a pre-hook on each takes the gradient of the looked-up vectors
//     ([n, dim]) and hands the node an undefined gradient (so it computes nothing);
//   * a post-hook on every other producer of that gradient (the tied layer) moves its part into
//     the bucket as soon as it exists; the bucket is ready once all of them have delivered;
//   * finalize_backward all-gathers every rank's indices and vectors and turns them into the
//     weight gradient with embedding_dense_backward, the same computation on the same data on
//     every rank (so the result is bit-identical everywhere), and adds its average to the
//     averaged bucket.
// Padded to the largest rank's lookup count, this moves world x n x dim values instead of the
// dense rows x dim; when that would be more (world x n >= rows: small tables, long batches), or
// when some rank could not take the rows, the lookups' part is all-reduced densely instead.
// The lookup counts travel in a small all-gather started in prepare_for_backward, which every
// rank runs on every synchronizing backward while the exchange is on, so that all ranks take the
// same decisions; it is turned off for good if no rank had a lookup in the first backward.
// A weight may also get a gradient from outside the forward (a penalty on it, an output layer
// applied to the outputs), which the graph walk from the outputs cannot see: a pre-hook on its
// AccumulateGrad keeps that part aside, and the first exchange agrees (one small collective, read
// on the host once) on which weights had one; those take the dense path with it, then and for
// good. Such a gradient showing up only in a later backward is an error.

#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <algorithm>

#include "ddp/collectives.h"
#include "ddp/reducer.h"

namespace nbdist::ddp {

namespace {

using torch::autograd::Node;
using torch::autograd::variable_list;

constexpr const char* kLookupNode = "EmbeddingBackward0";

}  // namespace

void Reducer::plan_embedding_uses(const Producers& producers) {
  using torch::autograd::generated::EmbeddingBackward0;
  std::vector<int64_t> local(params_.size(), -1);  // lookups exchanged as rows, per parameter
  const auto token = self_;
  const auto serial = emb_serial_;
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i];
    const auto& prods = producers[i];
    if (prods.empty() || p.dim() != 2 || emb_dense_only_[i]) continue;
    std::vector<EmbeddingBackward0*> lookups;
    bool ok = true;
    int64_t dense = 0;
    for (const auto& [node, slot] : prods) {
      if (node && node->name() == kLookupNode) {
        auto* lookup = static_cast<EmbeddingBackward0*>(node);
        ok = ok && !lookup->sparse && !lookup->scale_grad_by_freq;
        lookups.push_back(lookup);
      } else {
        ok = ok && node != nullptr;  // fed by the root itself: nothing to hook
        ++dense;
      }
    }
    // Hooks the user put on the parameter must see its gradient arrive as usual.
    if (!ok || lookups.empty() || !accumulators_[i]->tensor_pre_hooks().empty() ||
        torch::autograd::impl::post_acc_grad_hooks(p))
      continue;
    EmbeddingUse use;
    use.param = static_cast<int64_t>(i);
    use.dense_edges = dense;
    use.padding_idx = lookups[0]->padding_idx.expect_int();
    int64_t n = 0;
    for (auto* lookup : lookups) {
      // Saved through hooks (activation checkpointing, offloading): unpacking them now would
      // run those hooks outside backward. Such a weight keeps the dense path.
      if (lookup->indices_.has_hooks()) ok = false;
      if (!ok) break;
      auto indices = lookup->indices_.unpack();
      if (!indices.defined() || lookup->padding_idx.expect_int() != use.padding_idx) ok = false;
      if (!ok) break;
      n += indices.numel();
      use.indices.push_back(indices.reshape(-1));
    }
    if (!ok || world_size_ * n >= p.size(0)) continue;  // the rows would move more than W
    use.rows.resize(lookups.size());
    const size_t u = emb_.size();
    local[i] = n;
    emb_of_[i] = static_cast<int64_t>(u);
    emb_.push_back(std::move(use));
    for (size_t j = 0; j < lookups.size(); ++j)
      lookups[j]->add_pre_hook(std::make_unique<LambdaPreHook>(
          [token, serial, u, j](const variable_list& grads) -> variable_list {
            auto* self = token->load();
            if (self && self->on_lookup_grad(serial, u, j, grads[0])) return {at::Tensor()};
            return grads;
          }));
    for (const auto& [node, slot] : prods) {
      if (node->name() == kLookupNode) continue;
      const auto s = static_cast<size_t>(slot);
      node->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [token, serial, u, s](const variable_list& outputs,
                                const variable_list&) -> variable_list {
            auto* self = token->load();
            if (!self || !self->on_dense_part(serial, u, outputs[s])) return outputs;
            auto out = outputs;
            out[s] = at::Tensor();  // AccumulateGrad must not add it a second time
            return out;
          }));
    }
  }
  start_size_gather(local);
}

bool Reducer::on_grad_arriving(int64_t index, const at::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (reduced_ && grad.defined())
    // torch's DDP lets it through, and the ranks drift apart without a word.
    throw DDPError(ErrorKind::kInvalidInput,
                   "rank " + std::to_string(rank_) + ": parameter '" + names_[index] +
                       "' received a gradient after this forward's backward pass was already "
                       "averaged across ranks (a second backward through the same forward, "
                       "retain_graph=True, or a forward of the module outside the DDP wrapper): "
                       "it would stay on this rank and the ranks would drift apart. Run the "
                       "forward through DDP again before each backward, or add the losses and "
                       "call backward once; for local accumulation use no_sync()");
  if (!armed_ || emb_of_[index] < 0 || !grad.defined()) return false;
  auto& outside = emb_[emb_of_[index]].outside;
  outside = outside.defined() ? outside + grad : grad;
  return true;
}

void Reducer::agree_on_outside_uses_locked() {
  std::vector<int32_t> flags(params_.size(), 0);
  for (const auto& use : emb_) flags[use.param] = use.outside.defined() ? 1 : 0;
  std::vector<at::Tensor> v{
      at::tensor(flags, at::TensorOptions().dtype(at::kInt)).to(params_[0].device())};
  pg_->allreduce(v)->wait();
  const auto host = v[0].cpu();
  for (size_t i = 0; i < params_.size(); ++i)
    if (host.data_ptr<int32_t>()[i] > 0) emb_dense_only_[i] = 1;
}

bool Reducer::on_lookup_grad(uint64_t serial, size_t use, size_t lookup, const at::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (serial != emb_serial_ || !armed_) return false;
  emb_[use].rows[lookup] = grad;  // undefined: this lookup contributes nothing
  return true;
}

void Reducer::prime_view_locked(int64_t index) {
  auto view = grad_view(index);
  const auto& grad = params_[index].grad();
  if (!grad.defined())
    view.zero_();
  else if (!grad.is_alias_of(view))
    view.copy_(grad);
}

bool Reducer::on_dense_part(uint64_t serial, size_t u, const at::Tensor& part) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (serial != emb_serial_ || !armed_) return false;
  at::NoGradGuard no_grad;
  begin_backward_locked();
  auto& use = emb_[u];
  const auto i = use.param;
  auto view = grad_view(i);
  if (part.defined()) {
    // What AccumulateGrad would do, in the bucket: .grad (accumulated so far) plus this part.
    if (use.wrote)
      view.add_(part);
    else if (!params_[i].grad().defined())
      view.copy_(part);
    else
      prime_view_locked(i), view.add_(part);
    if (!use.wrote && options_.gradient_as_bucket_view) params_[i].mutable_grad() = view;
    use.wrote = true;
  }
  if (++use.dense_done == use.dense_edges && !ready_[i]) {
    if (!use.wrote) prime_view_locked(i);
    if (!rebuilt_) arrival_.push_back(i);
    mark_ready_locked(i);
  }
  return true;
}

void Reducer::start_size_gather(const std::vector<int64_t>& local) {
  const auto device = params_[0].device();
  const auto n = static_cast<int64_t>(local.size());
  auto counts = at::tensor(local, at::TensorOptions().dtype(at::kLong));
  SizeGather g;
  if (device.is_cpu()) {
    g.device_out = at::empty({world_size_ * n}, counts.options());
    g.work = all_gather_flat(pg_, g.device_out, counts);
    g.counts = HostCopy(g.device_out);  // valid once the work is done
  } else {
    // The counts reach the host through a side stream, so neither the compute stream nor the
    // host waits here; finish_size_gather waits for that copy only.
    auto in = counts.pin_memory().to(device, /*non_blocking=*/true);
    g.device_out = at::empty({world_size_ * n}, in.options());
    g.work = all_gather_flat(pg_, g.device_out, in);
    const c10::impl::VirtualGuardImpl impl(device.type());
    const auto side = impl.getStreamFromGlobalPool(device);
    // Read there; a forward whose backward never comes drops it before that read has run.
    g.device_out.record_stream(side);
    c10::StreamGuard guard(side);
    g.work->wait();
    g.counts = HostCopy(g.device_out);
  }
  sizes_ = std::move(g);
}

std::vector<int64_t> Reducer::finish_size_gather() {
  auto g = std::move(sizes_);
  sizes_ = SizeGather();
  if (g.device_out.is_cpu()) g.work->wait();
  const auto& host = g.counts.get();
  const auto* data = host.data_ptr<int64_t>();
  return std::vector<int64_t>(data, data + host.numel());
}

void Reducer::finish_embeddings_locked(const std::function<void()>& wait_buckets) {
  if (!sizes_.work) {  // the exchange is off, or this backward was not prepared for it
    wait_buckets();
    return;
  }
  const auto counts = finish_size_gather();
  const auto num_params = params_.size();
  const double scale = 1.0 / world_size_;
  // Weights that got a gradient from outside the forward in the first exchange take the dense
  // path in it, with that gradient, and keep it for good (one host sync, once).
  if (!emb_probed_) agree_on_outside_uses_locked();
  // Per parameter: the most lookups a rank has (-1: no rank exchanges it) and whether they go
  // as rows, the same decision on every rank.
  std::vector<std::pair<int64_t, bool>> plan(num_params, {-1, false});
  for (size_t i = 0; i < num_params; ++i) {
    int64_t most = -1;
    bool everyone = true;
    for (int r = 0; r < world_size_; ++r) {
      const auto n = counts[r * num_params + i];
      most = std::max(most, n);
      everyone = everyone && n >= 0;
    }
    plan[i] = {most, everyone && world_size_ * most < params_[i].size(0) && !emb_dense_only_[i]};
    const EmbeddingUse* use = emb_of_[i] >= 0 ? &emb_[emb_of_[i]] : nullptr;
    // Found before any exchange is issued: a later backward that brings such a gradient for a
    // weight exchanged as rows (its bucket may be on the wire already).
    if (use && use->outside.defined() && plan[i].second)
      throw DDPError(ErrorKind::kInvalidInput,
                     "rank " + std::to_string(rank_) + ": parameter '" + names_[i] +
                         "' received a gradient from outside the wrapped module's forward (a "
                         "penalty on the weight, an output layer applied to the outputs) in "
                         "synchronizing backward " +
                         std::to_string(sync_rounds_ + 1) +
                         " but not in the first, from which embedding_rows=True learns which "
                         "weights keep the dense path; use the weight the same way from the "
                         "first step, or pass embedding_rows=False to DDP "
                         "(TrainConfig.embedding_rows=False)");
  }
  struct Exchange {
    int64_t param = -1;
    int64_t most = 0;     // rows per rank in the exchange
    int64_t gather = -1;  // the copy engines' gather buffer, or -1
    bool rows = false;
    at::Tensor indices, values;  // gathered over the process group; dense: the all-reduced part
    std::vector<c10::intrusive_ptr<::c10d::Work>> works;
  };
  std::vector<Exchange> exchanges;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < num_params; ++i) {
    const auto [most, rows] = plan[i];
    if (most < 0) continue;  // no rank took this parameter's lookups
    const auto& p = params_[i];
    const auto dim = p.size(1);
    const EmbeddingUse* use = emb_of_[i] >= 0 ? &emb_[emb_of_[i]] : nullptr;
    Exchange ex;
    ex.param = static_cast<int64_t>(i);
    ex.most = most;
    // This rank's lookups: their indices and the gradients of the looked-up vectors (a lookup
    // of the padding index has none, as in nn.Embedding).
    at::Tensor indices, values;
    if (use) {
      std::vector<at::Tensor> v;
      for (size_t j = 0; j < use->indices.size(); ++j)
        v.push_back(use->rows[j].defined()
                        ? use->rows[j].reshape({-1, dim})
                        : at::zeros({use->indices[j].numel(), dim}, p.options()));
      indices = use->indices.size() == 1 ? use->indices[0] : at::cat(use->indices);
      values = v.size() == 1 ? v[0] : at::cat(v);
      if (use->padding_idx >= 0)
        values = values.masked_fill(indices.eq(use->padding_idx).unsqueeze(1), 0);
    }
    if (!rows) {
      // Dense: ranks that took the rows contribute them as a weight gradient, with what came
      // from outside the forward; the others already have theirs in the bucket and contribute
      // zeros.
      ex.values = use ? at::embedding_dense_backward(values, indices, p.size(0), -1, false)
                      : at::zeros_like(p, p.options().requires_grad(false));
      if (use && use->outside.defined()) ex.values.add_(use->outside);
      ::c10d::AllreduceOptions opts;
      if (use_avg_op_)
        opts.reduceOp = ::c10d::ReduceOp(::c10d::ReduceOp::AVG);
      else
        ex.values.div_(world_size_);
      std::vector<at::Tensor> v{ex.values};
      ex.works.push_back(pg_->allreduce(v, opts));
      exchanges.push_back(std::move(ex));
      continue;
    }
    // Rows: this rank's, scaled by 1/world and padded to `most` (zero vectors at index 0).
    ex.rows = true;
    const auto n = indices.numel();
    const auto slot = emb_gather_.find(ex.param);
    at::Tensor own_indices, own_values;
    if (copy_engines_ && slot != emb_gather_.end() && slot->second.second >= most) {
      ex.gather = slot->second.first;
      std::tie(own_indices, own_values) = gather_chunk(ex.param, rank_, most);
    } else {
      if (copy_engines_ && rebuilt_) {
        // Outgrown (or never sized): room for half as many again, up to the most lookups that
        // still take this path. Every rank decides alike, from the gathered counts.
        const auto room = std::min(most + most / 2, (p.size(0) - 1) / world_size_);
        emb_capacity_[ex.param] = std::max(emb_capacity_[ex.param], room);
        emb_regrow_ = true;
      }
      own_indices = at::empty({most}, indices.options().dtype(at::kLong));
      own_values = at::empty({most, dim}, values.options());
    }
    own_indices.narrow(0, 0, n).copy_(indices);
    auto head = own_values.narrow(0, 0, n);
    at::mul_out(head, values, at::scalar_tensor(scale, at::kDouble));
    if (n < most)
      own_indices.narrow(0, n, most - n).zero_(), own_values.narrow(0, n, most - n).zero_();
    if (ex.gather >= 0) {
      const auto capacity = emb_gather_.at(ex.param).second;
      copy_engines_->gather(ex.gather, static_cast<uint32_t>(sync_rounds_ + 1),
                            capacity * 8 + most * dim * p.element_size());
    } else {
      ex.indices = at::empty({world_size_ * most}, own_indices.options());
      ex.values = at::empty({world_size_ * most, dim}, own_values.options());
      ex.works.push_back(all_gather_flat(pg_, ex.indices, own_indices));
      ex.works.push_back(all_gather_flat(pg_, ex.values, own_values));
    }
    exchanges.push_back(std::move(ex));
  }
  if (!emb_probed_) {
    emb_probed_ = true;
    // The same on every rank: decided from the gathered counts and the agreed dense-only set.
    emb_off_ = std::none_of(exchanges.begin(), exchanges.end(),
                            [this](const Exchange& ex) { return !emb_dense_only_[ex.param]; });
  }
  if (!rebuilt_)  // the copy engines, rebuilt with the buckets, get a gather buffer this size
    for (const auto& ex : exchanges)
      if (ex.rows) emb_capacity_[ex.param] = ex.most;
  wait_buckets();
  for (auto& ex : exchanges) {
    for (auto& w : ex.works) w->wait();
    auto view = grad_view(ex.param);
    if (!ex.rows) {
      view.add_(ex.values);
      ++embedding_dense_exchanges_;
    } else {
      // Every rank adds the same gathered rows in the same order (index_put_ with accumulate
      // sorts the indices and sums each row's vectors in turn): identical everywhere.
      if (ex.gather < 0) {
        view.index_put_({ex.indices}, ex.values, /*accumulate=*/true);
      } else {
        for (int r = 0; r < world_size_; ++r) {
          auto [indices, values] = gather_chunk(ex.param, r, ex.most);
          view.index_put_({indices}, values, /*accumulate=*/true);
        }
        ++embedding_copy_engine_exchanges_;
      }
      ++embedding_row_exchanges_;
    }
    auto& grad = params_[ex.param].mutable_grad();
    if (options_.gradient_as_bucket_view && !(grad.defined() && grad.is_alias_of(view)))
      grad = view;
  }
  for (auto& use : emb_)  // the graph's, not ours to keep
    use.indices.clear(), use.rows.clear(), use.outside.reset();
}

std::pair<at::Tensor, at::Tensor> Reducer::gather_chunk(int64_t param, int rank, int64_t rows) {
  // Chunk layout: [capacity int64 indices | capacity x dim values], 256-byte aligned per rank.
  const auto& [index, capacity] = emb_gather_.at(param);
  const auto& p = params_[param];
  auto buffer = copy_engines_->bucket(index);
  const auto chunk = buffer.numel() / world_size_;
  auto mine = buffer.narrow(0, rank * chunk, chunk);
  auto indices = mine.narrow(0, 0, capacity * 8).view(at::kLong).narrow(0, 0, rows);
  auto values = mine.narrow(0, capacity * 8, capacity * p.size(1) * p.element_size())
                    .view(p.scalar_type())
                    .view({capacity, p.size(1)})
                    .narrow(0, 0, rows);
  return {indices, values};
}

std::vector<BucketLayout> Reducer::gather_layouts(int64_t first_index) {
  emb_gather_.clear();
  std::vector<BucketLayout> layouts;
  for (const auto& [param, capacity] : emb_capacity_) {
    const auto& p = params_[param];
    const int64_t bytes = capacity * 8 + capacity * p.size(1) * p.element_size();
    BucketLayout layout;
    layout.numel = world_size_ * ((bytes + 255) / 256 * 256);
    layout.dtype = at::kByte;
    layout.gather_only = true;
    emb_gather_[param] = {first_index + static_cast<int64_t>(layouts.size()), capacity};
    layouts.push_back(layout);
  }
  return layouts;
}

}  // namespace nbdist::ddp
