#include "ddp/loop.h"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>

#include "ddp/adamw.h"
#include "ddp/checkpoint.h"
#include "ddp/collectives.h"
#include "ddp/host_copy.h"

namespace nbdist::ddp {

namespace {

using Clock = std::chrono::steady_clock;

// Enables autocast for one forward; leaving the outermost level drops the cast-weight cache, which
// would otherwise hold copies of weights from before the next optimizer step.
class AutocastGuard {
 public:
  AutocastGuard(at::DeviceType device, std::optional<at::ScalarType> dtype) : device_(device) {
    if (!dtype) return;
    active_ = true;
    prev_enabled_ = at::autocast::is_autocast_enabled(device);
    prev_dtype_ = at::autocast::get_autocast_dtype(device);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType device_;
  bool active_ = false;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

double lr_at(const TrainConfig& cfg, int64_t step) {
  if (step < cfg.warmup_steps) return cfg.lr * static_cast<double>(step + 1) / cfg.warmup_steps;
  if (cfg.schedule == "constant") return cfg.lr;
  const double span = std::max<int64_t>(1, cfg.max_steps - cfg.warmup_steps);
  const double progress = std::min(1.0, (step - cfg.warmup_steps) / span);
  if (cfg.schedule == "linear") return cfg.lr - (cfg.lr - cfg.min_lr) * progress;
  return cfg.min_lr + 0.5 * (1 + std::cos(M_PI * progress)) * (cfg.lr - cfg.min_lr);
}

at::Tensor scalar(double v) { return at::scalar_tensor(v, at::kDouble); }

}  // namespace

std::vector<StepRecord> train(Reducer& reducer, const std::vector<at::Tensor>& buffers,
                              const TrainConfig& cfg, const TrainCallbacks& cb) {
  const auto& params = reducer.params();
  const auto pg = reducer.process_group();
  const int rank = reducer.rank();
  const int world = reducer.world_size();
  const at::Device device = params[0].device();
  const bool fp16 = cfg.precision == "fp16";
  std::optional<at::ScalarType> amp;
  if (cfg.precision == "bf16") amp = at::kBFloat16;
  if (fp16) amp = at::kHalf;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const std::string ckpt_path = cfg.ckpt_dir.empty() ? "" : cfg.ckpt_dir + "/latest.pt";

  // The built-in AdamW, unless the user brought an optimizer (then no moments are allocated here);
  // sharded when asked and possible (the reducer reduce-scatters until train() returns).
  const bool user_opt = static_cast<bool>(cb.optimizer_step);
  struct Unshard {
    explicit Unshard(Reducer& r) : reducer(r) {}
    Unshard(const Unshard&) = delete;
    Unshard& operator=(const Unshard&) = delete;
    Reducer& reducer;
    ~Unshard() {
      try {
        reducer.set_sharded(false);
      } catch (...) {  // only a broken invariant; the error already on its way out matters more
      }
    }
  };
  std::optional<Unshard> unshard;  // declared before opt: unsharded after its gathers landed
  std::unique_ptr<AdamWBase> opt;
  if (!user_opt && cfg.shard_optimizer && world > 1) {
    auto why = ShardedAdamW::why_not(reducer);
    if (why.empty()) why = reducer.set_sharded(true);
    // Asked for and not possible: an error (the same on every rank), not a quiet fallback that
    // holds the whole state on each GPU.
    if (!why.empty())
      throw DDPError(ErrorKind::kInvalidInput,
                     "TrainConfig.shard_optimizer: the AdamW cannot be sharded here: " + why);
    unshard.emplace(reducer);
    opt = std::make_unique<ShardedAdamW>(reducer, cfg);
  }
  if (!user_opt && !opt) opt = std::make_unique<AdamW>(params, cfg);
  const char* kUserOptKey = "optimizer.state_dict";
  double scale = fp16 ? cfg.init_scale : 1.0;
  int64_t good_steps = 0;  // consecutive finite steps since the scale last changed
  int64_t step = 0;

  // Resume: every rank reads the last complete checkpoint and continues where it ended.
  if (!ckpt_path.empty() && cfg.resume) {
    if (auto ck = load_checkpoint(ckpt_path)) {
      auto get = [&](const std::string& key) -> at::Tensor& {
        auto it = ck->find(key);
        if (it == ck->end())
          throw DDPError(ErrorKind::kInvalidInput,
                         "checkpoint '" + ckpt_path + "' has no '" + key +
                             "': it was written for another model or by another program");
        return it->second;
      };
      const bool saved_user_opt = ck->count(kUserOptKey) > 0;
      if (saved_user_opt != user_opt)
        throw DDPError(ErrorKind::kInvalidInput,
                       "checkpoint '" + ckpt_path + "' was written with " +
                           (saved_user_opt ? "a user optimizer" : "train()'s built-in AdamW") +
                           " but this run uses " +
                           (user_opt ? "a user optimizer" : "the built-in AdamW") +
                           "; resume with the same kind of optimizer or pass resume=False");
      const auto saved_world = get("world_size").item<int64_t>();
      at::NoGradGuard no_grad;
      // Everything is checked before anything is copied: a checkpoint that does not fit leaves
      // the model (and optimizer) as they were, so that resume=False can still start afresh.
      std::vector<std::pair<at::Tensor, std::string>> copies;
      for (size_t i = 0; i < params.size(); ++i)
        copies.emplace_back(params[i], "param." + std::to_string(i));
      for (size_t i = 0; i < buffers.size(); ++i)
        copies.emplace_back(buffers[i], "buffer." + std::to_string(i));
      for (const auto& [dst, key] : copies) {
        const auto& src = get(key);
        if (src.sizes() != dst.sizes())
          throw DDPError(ErrorKind::kInvalidInput, "checkpoint '" + ckpt_path + "': '" + key +
                                                       "' has shape " + c10::str(src.sizes()) +
                                                       " but the model's is " +
                                                       c10::str(dst.sizes()));
      }
      const CheckpointGet cget = [&](const std::string& key) -> const at::Tensor& {
        return get(key);
      };
      if (opt) opt->check(cget, ckpt_path);
      // Parameters are stored by position: a model with fewer of them would take a prefix of
      // another model's (same shapes, different layers) without a word.
      int64_t saved_params = 0, saved_buffers = 0;
      for (const auto& kv : *ck) {
        saved_params += kv.first.rfind("param.", 0) == 0;
        saved_buffers += kv.first.rfind("buffer.", 0) == 0;
      }
      if (saved_params != static_cast<int64_t>(params.size()) ||
          saved_buffers != static_cast<int64_t>(buffers.size()))
        throw DDPError(ErrorKind::kInvalidInput,
                       "checkpoint '" + ckpt_path + "' holds " + std::to_string(saved_params) +
                           " parameters and " + std::to_string(saved_buffers) +
                           " buffers but the model has " + std::to_string(params.size()) + " and " +
                           std::to_string(buffers.size()) +
                           ": it was written for another model (resume=False to start afresh)");
      const auto saved_step = get("step").item<int64_t>();
      const auto saved_scale = get("scaler.scale").item<double>();
      const auto saved_good = get("scaler.good_steps").item<int64_t>();
      // A rank the checkpoint had continues its random streams (dropout masks); a rank it did
      // not have (resuming on more ranks), or a GPU rank of a CPU run, keeps its fresh seed.
      const auto cpu_key = "rng.cpu." + std::to_string(rank);
      const auto dev_key = "rng.device." + std::to_string(rank);
      if (ck->count(cpu_key)) {
        at::Generator cpu_gen = at::globalContext().defaultGenerator(at::kCPU);
        cpu_gen.set_state(get(cpu_key));
      }
      if (device.is_cuda() && ck->count(dev_key)) {
        at::Generator dev_gen = at::globalContext().defaultGenerator(device);
        dev_gen.set_state(get(dev_key));
      }
      if (user_opt) cb.optimizer_load(get(kUserOptKey));
      for (auto& [dst, key] : copies) dst.copy_(get(key));
      if (opt) opt->load(cget);
      step = saved_step;
      scale = saved_scale;
      good_steps = saved_good;
      // The position counts micro-batches per rank. On another number of ranks the run goes on
      // after the same number of micro-batches over all ranks (rounded down), so an epoch of a
      // dataset still ends where it would have; the global batch is now this run's.
      const auto saved_position = get("data_position").item<int64_t>();
      const auto position = saved_position * saved_world / world;
      if (saved_world != world && rank == 0 && cb.log && cfg.log_every > 0)
        cb.log("resuming step " + std::to_string(step) + " of a " + std::to_string(saved_world) +
               "-rank run on " + std::to_string(world) + " ranks: data position " +
               std::to_string(saved_position) + " -> " + std::to_string(position) +
               " micro-batches per rank; the global batch is now " + std::to_string(world) + "/" +
               std::to_string(saved_world) + " of what it was");
      cb.data_seek(position);
    }
  }

  // The fp16 loss scaler lives on the device (torch's GradScaler kernels): the scale, the count of
  // good steps since it last changed, and each step's found-inf flag, which gates the fused AdamW
  // there. Only a user optimizer makes the host read the flag (it cannot be told to skip
  // otherwise).
  at::Tensor scale_dev, good_dev;
  if (fp16) {
    scale_dev = at::full({}, scale, f32);
    good_dev = at::full({}, good_steps, f32.dtype(at::kInt));
  }

  auto write_checkpoint = [&] {
    // Each rank's RNG goes into the file so that a resumed run draws the same dropout masks.
    auto cpu_rng =
        all_gather(pg, at::globalContext().defaultGenerator(at::kCPU).get_state(), device);
    std::vector<at::Tensor> dev_rng;
    if (device.is_cuda())
      dev_rng = all_gather(pg, at::globalContext().defaultGenerator(device).get_state(), device);
    TensorMap ck;
    if (opt) opt->save(rank == 0 ? &ck : nullptr);  // sharded: gathers the moments (collective)
    if (rank != 0) return;
    for (size_t i = 0; i < params.size(); ++i) ck["param." + std::to_string(i)] = params[i];
    if (user_opt) ck[kUserOptKey] = cb.optimizer_state();
    for (size_t i = 0; i < buffers.size(); ++i) ck["buffer." + std::to_string(i)] = buffers[i];
    for (int r = 0; r < world; ++r) {
      ck["rng.cpu." + std::to_string(r)] = cpu_rng[r];
      if (!dev_rng.empty()) ck["rng.device." + std::to_string(r)] = dev_rng[r];
    }
    ck["step"] = at::scalar_tensor(step, at::kLong);
    ck["world_size"] = at::scalar_tensor(world, at::kLong);
    ck["data_position"] = at::scalar_tensor(cb.data_position(), at::kLong);
    ck["scaler.scale"] = scalar(fp16 ? scale_dev.item<double>() : scale);
    ck["scaler.good_steps"] = at::scalar_tensor(fp16 ? good_dev.item<int64_t>() : 0, at::kLong);
    save_checkpoint(ckpt_path, ck);
  };

  // Gradients left from before train() (a backward outside it without zero_grad()) are not
  // part of the first step.
  for (const auto& p : params) const_cast<at::Tensor&>(p).mutable_grad().reset();

  std::vector<StepRecord> history;
  // A step's numbers (loss, gradient norm; fp16: the scale it used and whether it overflowed)
  // reach the host one step late on a GPU: reading them at once would leave the GPU idle while
  // the host queues the next step. The host copy is taken as soon as they exist and read after
  // the next step's backward has been queued; checkpoint and last steps are read at once.
  struct Pending {
    StepRecord rec;
    HostCopy numbers;  // [loss, norm] or, fp16, [loss, norm, scale, found_inf]
  };
  std::optional<Pending> pending;
  auto log_step = [&](const StepRecord& rec) {
    if (rank != 0 || !cb.log || cfg.log_every <= 0) return;
    if (!(rec.step % cfg.log_every == 0 || rec.step == cfg.max_steps || rec.step == 1)) return;
    char line[256];
    int n = std::snprintf(
        line, sizeof line, "step %5lld/%lld | loss %.4f | lr %.2e | norm %.3f | %.1f ms | %.0f %s",
        static_cast<long long>(rec.step), static_cast<long long>(cfg.max_steps), rec.loss, rec.lr,
        rec.grad_norm, rec.seconds * 1e3, rec.throughput,
        cfg.tokens_per_micro_batch > 0 ? (cfg.throughput_unit == "tokens" ? "tok/s" : "samples/s")
                                       : "batches/s");
    std::string s(line, static_cast<size_t>(std::max(0, n)));
    if (rec.mfu > 0) s += " | mfu " + std::to_string(rec.mfu * 100).substr(0, 4) + "%";
    if (fp16) s += " | scale " + std::to_string(static_cast<long long>(rec.scale));
    if (rec.skipped) s += " | skipped (inf/nan)";
    if (rec.evaluated) s += " | eval " + std::to_string(rec.eval_loss).substr(0, 6);
    cb.log(s);
  };
  auto non_finite = [&](const StepRecord& rec) {
    return DDPError(ErrorKind::kFailure,
                    "non-finite gradient at step " + std::to_string(rec.step) + " (rank " +
                        std::to_string(rank) + " loss " + std::to_string(rec.loss) +
                        "): lower the learning rate, check the data for inf/nan, or train with "
                        "precision='fp16' and its loss scaler");
  };
  // Fills in the pending step's loss and norm, logs it and adds it to the history.
  auto resolve = [&]() {
    if (!pending) return;
    auto rec = pending->rec;
    const auto host = pending->numbers.get().to(at::kDouble);
    pending.reset();
    const double* v = host.const_data_ptr<double>();
    rec.loss = v[0];
    rec.grad_norm = v[1];
    if (fp16) {
      rec.scale = v[2];
      rec.skipped = v[3] != 0;
    }
    if (!fp16 && !std::isfinite(rec.grad_norm)) throw non_finite(rec);
    log_step(rec);
    history.push_back(rec);
  };

  while (step < cfg.max_steps) {
    const auto t0 = Clock::now();
    if (opt) opt->wait();  // sharded: the last update's slices are in every parameter
    StepRecord rec;
    rec.lr = lr_at(cfg, step);

    // 1. forward and backward on each micro-batch; only the last one all-reduces, bucket by
    //    bucket while its backward is still running (the reducer's hooks)
    auto loss_sum = at::zeros({}, f32);
    const auto rounds_before = reducer.sync_rounds();
    for (int64_t micro = 0; micro < cfg.grad_accum; ++micro) {
      const bool sync = micro == cfg.grad_accum - 1;
      at::Tensor loss;
      {
        AutocastGuard autocast(device.type(), amp);
        loss = cb.forward_loss(sync);
      }
      if (!loss.defined() || loss.numel() != 1)
        throw DDPError(ErrorKind::kInvalidInput,
                       "the loss must be a tensor with one element, got " +
                           (loss.defined() ? "shape " + c10::str(loss.sizes()) : "None"));
      loss_sum += loss.detach().to(at::kFloat).reshape({});
      auto scaled = loss.to(at::kFloat).reshape({});
      scaled = fp16 ? scaled * (scale_dev / cfg.grad_accum) : scaled / cfg.grad_accum;
      torch::autograd::backward({scaled});
    }
    // No gradient reached any parameter (no hook fired, so nothing was reduced): the step would
    // only decay the weights.
    if (reducer.sync_rounds() == rounds_before)
      throw DDPError(ErrorKind::kInvalidInput,
                     "rank " + std::to_string(rank) + ": the loss of step " +
                         std::to_string(step + 1) +
                         " does not depend on any of the model's parameters (no gradient reached "
                         "them): compute it from the model's output, and do not rebuild it from a "
                         "number (torch.tensor(loss.item(), requires_grad=True) cuts the graph)");
    resolve();  // the previous step, while the GPU runs this one's backward

    // 2. unscale (fp16) and take the global gradient norm: the reducer already averaged the
    //    gradients, so every rank holds the same ones and the local norm is the global norm.
    //    A param no rank used (find_unused_parameters) has no gradient and takes no part.
    //    Sharded, each rank clips and updates its slices, and the norm is their all-reduced sum.
    std::vector<at::Tensor> grads;
    if (opt)
      grads = opt->grads();
    else  // a user optimizer
      for (const auto& p : params)
        if (p.grad().defined()) grads.push_back(p.grad());
    //    fp16: the reduced gradients are the same on every rank, so is their found-inf flag.
    at::Tensor found_inf;
    if (fp16) {
      found_inf = at::zeros({}, f32);
      if (!grads.empty())
        at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, scale_dev.reciprocal());
    }
    auto norm = grads.empty() ? at::zeros({}, f32)
                              : at::linalg_vector_norm(at::stack(at::_foreach_norm(grads)), 2);
    if (opt) opt->reduce_norm(norm, found_inf);
    std::vector<at::Tensor> parts{loss_sum / cfg.grad_accum, norm.to(at::kFloat)};
    if (fp16) parts.insert(parts.end(), {scale_dev, found_inf});
    auto numbers = at::stack(parts);  // a copy: the scale this step used

    // 3. clip and update, all on the device: the clip factor as in torch.nn.utils.clip_grad_norm_;
    //    fp16: a step with inf/nan gradients is skipped on every rank alike (the fused AdamW
    //    reads found_inf); bf16/fp32: a non-finite norm raises when it is read, and the built-in
    //    AdamW skips that update on the device too, so the weights the error leaves are the last
    //    finite ones (a user optimizer is held back on the CPU, where the norm is read now anyway).
    if (cfg.grad_clip > 0 && !grads.empty())
      at::_foreach_mul_(grads, (cfg.grad_clip / (norm + 1e-6)).clamp_max(1.0));
    if (opt) {
      opt->step(rec.lr, fp16 ? found_inf : at::isfinite(norm).logical_not().to(at::kFloat));
    } else if (fp16 ? found_inf.item<double>() == 0
                    : !device.is_cpu() || std::isfinite(norm.item<double>())) {
      cb.optimizer_step(rec.lr);
    }

    // 4. loss scaler: back off on overflow, grow after growth_interval good steps (on the device)
    if (fp16)
      at::_amp_update_scale_(scale_dev, good_dev, found_inf, cfg.growth_factor, cfg.backoff_factor,
                             cfg.growth_interval);

    // 5. drop the gradients, as zero_grad() does: the next backward's AccumulateGrad keeps the
    //    gradient it is handed (no add to zeros) and the reducer copies it into its bucket once,
    //    half the memory traffic of zeroing the buckets and adding into them; a param unused in
    //    the next step (find_unused_parameters) keeps no gradient and the optimizer leaves it
    //    alone, as in one process
    for (const auto& p : params) const_cast<at::Tensor&>(p).mutable_grad().reset();
    ++step;
    rec.step = step;
    rec.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double per_step = cfg.tokens_per_micro_batch > 0 ? cfg.tokens_per_micro_batch : 1.0;
    rec.throughput = per_step * cfg.grad_accum * world / rec.seconds;
    if (cfg.flops_per_token > 0 && cfg.peak_flops > 0 && cfg.tokens_per_micro_batch > 0 &&
        cfg.throughput_unit == "tokens")
      rec.mfu = cfg.flops_per_token * rec.throughput / (cfg.peak_flops * world);

    // 6. eval: the mean loss over every rank's eval batches
    const bool last = step == cfg.max_steps;
    if (cb.eval_loss && cfg.eval_steps > 0 && cfg.eval_every > 0 &&
        (step % cfg.eval_every == 0 || last)) {
      at::NoGradGuard no_grad;
      if (opt) opt->wait();
      cb.eval_reset();
      auto sum = at::zeros({2}, f32);
      for (int64_t i = 0; i < cfg.eval_steps; ++i) {
        at::Tensor l;
        {
          AutocastGuard autocast(device.type(), amp);
          l = cb.eval_loss();
        }
        if (!l.defined()) break;  // this rank's eval batches ran out
        sum[0] += l.detach().to(at::kFloat).reshape({});
        sum[1] += 1;
      }
      std::vector<at::Tensor> v{sum};
      pg->allreduce(v)->wait();
      auto s = v[0].cpu();
      // A loss may be negative (a log-likelihood bound, a reward): "no eval" is a flag of its own.
      rec.evaluated = s[1].item<double>() > 0;
      if (rec.evaluated) rec.eval_loss = s[0].item<double>() / s[1].item<double>();
    }

    // 7. the step's record: logged (rank 0) and kept once its numbers are on the host
    // ckpt_dir alone (ckpt_every 0): the checkpoint at the end only.
    const bool ckpt_due =
        !ckpt_path.empty() && ((cfg.ckpt_every > 0 && step % cfg.ckpt_every == 0) || last);
    pending.emplace();
    pending->rec = rec;
    pending->numbers = HostCopy(numbers);
    // Read now: a non-finite checkpoint step raises before it is written.
    if (device.is_cpu() || last || ckpt_due) resolve();

    // 8. checkpoint (rank 0 writes, atomically)
    if (ckpt_due) write_checkpoint();
  }
  resolve();
  if (opt) opt->wait();
  return history;
}

}  // namespace nbdist::ddp
