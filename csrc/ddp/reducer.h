#pragma once

// The gradient reducer behind nbdist.ddp.DDP and nbdist.ddp.train.
//
// Gradients live in flat buckets (one tensor per bucket, parameters in reverse registration order,
// which is roughly the order backward produces them); each parameter's .grad is a view into its
// bucket, so an all-reduce of the bucket reduces all of them without copies. A post hook on every
// parameter's AccumulateGrad node marks the parameter ready; when a bucket is complete its
// all-reduce is launched right away, overlapping communication with the rest of backward. Buckets
// are launched strictly in index order on every rank, because c10d collectives must be issued in
// the same order everywhere. A final callback queued on the autograd engine waits for all of them.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>  // Node; named node.h only from torch 2.12
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/error.h"
#include "ddp/copy_engine.h"
#include "ddp/host_copy.h"

namespace nbdist::ddp {

NBDIST_DEFINE_ERROR(DDPError, "ddp");

// A node pre-hook from a function (torch has a lambda post-hook class only).
class LambdaPreHook : public torch::autograd::FunctionPreHook {
 public:
  using Fn = std::function<torch::autograd::variable_list(const torch::autograd::variable_list&)>;
  explicit LambdaPreHook(Fn fn) : fn_(std::move(fn)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    return fn_(grads);
  }

 private:
  Fn fn_;
};

struct ReducerOptions {
  int64_t bucket_cap_bytes = 25 << 20;   // bytes per bucket after the first
  int64_t first_bucket_bytes = 1 << 20;  // bytes of the first bucket (small: starts comms early)
  // Traverse the graph each forward to find unused params, and all-reduce a used-bitmap after
  // backward so that params unused on every rank keep their .grad (None stays None).
  bool find_unused_parameters = false;
  bool gradient_as_bucket_view = true;  // .grad is a view into the bucket (no copy in or out)
  // How buckets are averaged: "nccl" (the process group's all-reduce), "peer" or "host" (the
  // copy engines, see copy_engine.h), or "auto" ("host" for CUDA ranks on one host without P2P,
  // the process group otherwise).
  std::string transport = "auto";
  // Gradients of nn.Embedding lookups (F.embedding, not sparse, no scale_grad_by_freq) are
  // averaged by exchanging the looked-up rows (each rank's indices and the gradient of each
  // looked-up vector, an all-gather) instead of the [rows, dim] weight gradient, whenever that
  // moves fewer bytes (world x lookups < rows). The weight's other uses (a tied output layer) go
  // into its bucket as soon as backward produces them, so the bucket no longer waits for the
  // lookup at the very end of backward. Exact: every rank sums the same gathered rows.
  bool embedding_rows = true;
};

class Reducer {
 public:
  // params: the module's parameters that require grad, in registration order; names: for errors.
  Reducer(std::vector<at::Tensor> params, std::vector<std::string> names,
          c10::intrusive_ptr<::c10d::ProcessGroup> pg, ReducerOptions options);
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // Checks that every rank holds the same parameter shapes/dtypes (raises naming the first
  // mismatching parameter and ranks), then copies rank 0's params and `buffers` everywhere.
  void verify_and_broadcast(const std::vector<at::Tensor>& buffers,
                            const std::vector<std::string>& buffer_names);
  // Copies rank `root`'s buffers (or parameters) to all ranks in one coalesced broadcast per
  // dtype.
  void broadcast_buffers(const std::vector<at::Tensor>& buffers, int root = 0);

  // Uneven inputs (DDP.join()): while on, embedding gradients take the dense path (a rank that
  // has joined shadows the buckets' all-reduces, not the row exchanges), and, when
  // average_over > 0, the next backward's average is over that many ranks instead of all.
  void set_joining(bool on, int64_t average_over = 0);
  // On a rank that has joined: the collectives of one synchronizing backward of the ranks that
  // have not, with zeros for every gradient.
  void shadow_backward();

  // For train()'s sharded AdamW (TrainConfig.shard_optimizer): every bucket is padded to a
  // multiple of the world size and reduce-scattered instead of all-reduced, so that rank r holds
  // the average only in the r-th slice of each bucket (the rest of .grad keeps this rank's own
  // gradient). The bucket layout stays as it is from then on (no rebuild). Not with the copy
  // engines or join(): returns why it cannot, "" once it is on. Local: every rank calls it alike.
  std::string set_sharded(bool on);
  bool sharded() const { return shard_; }
  struct BucketSpan {
    at::Tensor buffer;             // the bucket (padded when sharded)
    std::vector<int64_t> params;   // parameter indices
    std::vector<int64_t> offsets;  // element offset of each in buffer
  };
  std::vector<BucketSpan> bucket_spans() const;

  // Called before each forward: rebuilds buckets once from the observed order, and fails if the
  // previous backward ended without reducing every parameter.
  void prepare_forward();
  // Arms the hooks for the next backward. sync=false (no_sync) only accumulates locally.
  // outputs: the forward's outputs, traversed to find unused params when that option is on.
  void prepare_for_backward(bool sync, const std::vector<at::Tensor>& outputs);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  // Counters for tests and benchmarks: bucket all-reduces launched, and backward passes reduced.
  int64_t allreduce_count() const { return allreduce_count_; }
  int64_t sync_rounds() const { return sync_rounds_; }
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Parameter indices of each bucket, in bucket order (for tests and diagnostics).
  std::vector<std::vector<int64_t>> bucket_indices() const;
  bool buckets_rebuilt() const { return rebuilt_; }
  const c10::intrusive_ptr<::c10d::ProcessGroup>& process_group() const { return pg_; }
  const std::vector<at::Tensor>& params() const { return params_; }
  const std::vector<std::string>& names() const { return names_; }
  const ReducerOptions& options() const { return options_; }
  // What averages the buckets: "peer", "host" (copy engines) or the process group's backend name.
  std::string transport() const;
  // Why "auto" did not pick the copy engines ("" when it did or was not asked to).
  const std::string& transport_note() const { return transport_note_; }
  // Whether prepare_for_backward needs the forward's outputs (it walks the autograd graph).
  bool wants_outputs() const;
  // Embedding gradients averaged by exchanging looked-up rows, and by a dense all-reduce because
  // rows would have moved more bytes (or a rank could not exchange rows), since construction.
  int64_t embedding_row_exchanges() const { return embedding_row_exchanges_; }
  int64_t embedding_dense_exchanges() const { return embedding_dense_exchanges_; }
  // Of the row exchanges, those that went through the copy engines' gather buffers.
  int64_t embedding_copy_engine_exchanges() const { return embedding_copy_engine_exchanges_; }

 private:
  struct Bucket {
    at::Tensor buffer;             // flat storage of all gradients in this bucket
    std::vector<int64_t> params;   // parameter indices
    std::vector<int64_t> offsets;  // element offset of each parameter in buffer
    int64_t pending = 0;           // params not yet ready in the current backward
    c10::intrusive_ptr<::c10d::Work> work;
  };

  // Groups params (in `order`) into buckets, without buffers.
  std::vector<Bucket> plan_buckets(const std::vector<int64_t>& order) const;
  // The current buckets planned afresh (same params, same order), for new buffers.
  std::vector<Bucket> replan_buckets() const;
  // Gives the buckets their buffers (the copy engines' when they are set up, else fresh zeros)
  // and moves the gradients accumulated so far into them.
  void install_buckets(std::vector<Bucket> buckets);
  // Collective: (re)creates copy_engines_ for these buckets, or leaves it null ("auto" on CPU or
  // when a rank cannot use them); throws when an explicitly asked path is unavailable.
  void create_copy_engines(const std::vector<Bucket>& buckets);
  // An embedding weight whose lookups this backward exchanges by rows (see embedding_grads.cc).
  struct EmbeddingUse {
    int64_t param = -1;
    int64_t dense_edges = 0;  // edges into its AccumulateGrad from other nodes
    int64_t dense_done = 0;   // of those, how many have delivered
    bool wrote = false;       // the bucket view holds this backward's first dense part
    int64_t padding_idx = -1;
    std::vector<at::Tensor> indices;  // each lookup's indices, flattened
    std::vector<at::Tensor> rows;     // gradient of each lookup's output (set during backward)
    // What its AccumulateGrad received from a use outside the forward (a penalty on the weight,
    // an output layer applied to the outputs), which the graph walk from the outputs cannot see.
    at::Tensor outside;
  };
  // An all-gather of one int64 per parameter whose result the host reads at the end of backward
  // without stalling the compute stream (it is started in prepare_for_backward).
  struct SizeGather {
    at::Tensor device_out;
    c10::intrusive_ptr<::c10d::Work> work;  // set while a gather awaits its backward
    HostCopy counts;
  };
  // For each parameter, the (node, output slot) pairs that feed its AccumulateGrad.
  using Producers = std::vector<std::vector<std::pair<torch::autograd::Node*, int64_t>>>;

  void on_grad_ready(int64_t index);
  // AccumulateGrad's pre-hook, before anything reaches .grad: refuses a gradient that arrives
  // after this forward's backward was already averaged (it would stay on this rank), and an
  // embedding weight exchanged by rows keeps what arrives there (from outside the forward) aside,
  // out of .grad and its bucket, for finish_embeddings_locked (returns true then).
  bool on_grad_arriving(int64_t index, const at::Tensor& grad);
  // The first exchange: which weights any rank took a gradient from outside the forward for
  // (a collective, read on the host once); they keep the dense path from then on.
  void agree_on_outside_uses_locked();
  void begin_backward_locked();
  // A new forward's round: hooks of older graphs pass their gradients through, and when it
  // synchronizes, every bucket waits for all its parameters again.
  void begin_round_locked(bool sync);
  // The buckets' reductions launched so far have landed.
  void wait_buckets_locked();
  // A synchronized round is complete (the first one's arrival order rebuilds the buckets).
  void end_round_locked();
  // Graph walk from the outputs: the set of nodes reached, and (when asked) the producers.
  void walk_graph(const std::vector<at::Tensor>& outputs, Producers* producers,
                  std::unordered_set<torch::autograd::Node*>* seen) const;
  // Whether this rank still looks for embedding lookups (the same answer on every rank).
  bool embeddings_active() const {
    return options_.embedding_rows && world_size_ > 1 && !emb_off_ && !joining_;
  }
  void plan_embedding_uses(const Producers& producers);
  // Hooks of this backward's graph (false: the graph is an older one, leave the gradient be).
  bool on_dense_part(uint64_t serial, size_t use, const at::Tensor& part);
  bool on_lookup_grad(uint64_t serial, size_t use, size_t lookup, const at::Tensor& grad);
  // The bucket view of `index` set to what .grad holds (zeros when it is undefined).
  void prime_view_locked(int64_t index);
  // finalize_backward: the row exchanges (or dense all-reduces) of this backward's embedding
  // gradients, added to their averaged buckets once `wait_buckets` has run.
  void finish_embeddings_locked(const std::function<void()>& wait_buckets);
  // The copy engines' all-gather buffers for the embedding rows (appended after the buckets when
  // the copy engines are rebuilt; sized by the first backward's lookups), and rank r's indices
  // and values in one of them.
  std::vector<BucketLayout> gather_layouts(int64_t first_index);
  std::pair<at::Tensor, at::Tensor> gather_chunk(int64_t param, int rank, int64_t rows);
  void start_size_gather(const std::vector<int64_t>& local);
  std::vector<int64_t> finish_size_gather();
  void mark_ready_locked(int64_t index);
  void launch_ready_buckets_locked();
  void finalize_backward();
  at::Tensor grad_view(int64_t index);

  std::vector<at::Tensor> params_;
  std::vector<std::string> names_;
  c10::intrusive_ptr<::c10d::ProcessGroup> pg_;
  ReducerOptions options_;
  int rank_ = 0;
  int world_size_ = 1;
  bool use_avg_op_ = false;  // the backend averages (NCCL AVG); otherwise pre-divide

  // The holder of a Node changed from std::shared_ptr (torch <= 2.11) to c10::intrusive_ptr
  // (later releases); take whatever this torch's grad_accumulator returns.
  using NodeHolder = decltype(torch::autograd::impl::grad_accumulator(std::declval<at::Tensor>()));
  std::vector<NodeHolder> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::vector<const torch::autograd::FunctionPreHook*> pre_hooks_;  // ours, per accumulator

  std::vector<Bucket> buckets_;
  std::unique_ptr<CopyEngineAllreduce> copy_engines_;  // null: the process group all-reduces
  std::string transport_note_;
  std::vector<int64_t> bucket_of_;  // param index -> bucket
  std::vector<int64_t> slot_of_;    // param index -> position in its bucket

  std::mutex mutex_;    // hooks may run on autograd device threads
  bool armed_ = false;  // a synchronizing backward is expected
  bool callback_queued_ = false;
  bool finished_ = true;  // the last armed backward completed its reduction
  bool reduced_ = false;  // the last forward's backward has been averaged (until the next forward)
  bool joining_ = false;       // in join(): see set_joining
  bool shard_ = false;         // see set_sharded
  int64_t average_over_ = 0;   // ranks the next average is over (0: all)
  std::vector<char> ready_;
  std::vector<char> unused_;  // found unused by the graph traversal for this backward
  // find_unused_parameters: params whose gradient hook fired since the last synchronized backward
  // (no_sync micro-steps included), all-reduced once per step into used_map_.
  std::vector<char> used_;
  at::Tensor used_map_;
  c10::intrusive_ptr<::c10d::Work> used_work_;
  // Locally unused params whose .grad already is a bucket view: their value before the bucket's
  // averaging, put back if no rank used them.
  std::vector<at::Tensor> saved_grad_;
  int64_t next_bucket_ = 0;
  std::vector<int64_t> arrival_;  // order of readiness in the first synchronized backward
  bool rebuilt_ = false;
  bool rebuild_pending_ = false;
  int64_t allreduce_count_ = 0;
  int64_t sync_rounds_ = 0;

  // Embedding row exchange: this backward's uses, param -> use (-1: none), the backward's serial
  // (hooks of an older graph pass gradients through untouched), and the hooks' handle on this
  // reducer (cleared by the destructor, so hooks on graphs that outlive it do nothing).
  std::vector<EmbeddingUse> emb_;
  std::vector<int64_t> emb_of_;
  uint64_t emb_serial_ = 0;
  bool emb_off_ = false;  // no rank had an embedding lookup in the first backward
  bool emb_probed_ = false;
  std::vector<char> emb_dense_only_;  // param -> used outside the forward in the first exchange
  SizeGather sizes_;
  std::shared_ptr<std::atomic<Reducer*>> self_;
  std::unordered_map<const torch::autograd::Node*, int64_t> param_of_acc_;
  std::map<int64_t, int64_t> emb_capacity_;  // param -> rows per rank a gather buffer holds
  std::map<int64_t, std::pair<int64_t, int64_t>> emb_gather_;  // param -> (buffer, capacity)
  int64_t embedding_row_exchanges_ = 0;
  int64_t embedding_dense_exchanges_ = 0;
  int64_t embedding_copy_engine_exchanges_ = 0;
  // A backward had more lookups than a gather buffer holds (its rows went over the process
  // group): the next forward rebuilds the copy engines with room for 1.5x as many.
  bool emb_regrow_ = false;
};

}  // namespace nbdist::ddp
