#pragma once

// The candidate Decoder: ingests samples (model text or grids, generated under augmentations),
// de-augments and groups them per unit, then ranks, selects and evaluates with any algorithm.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "arc/augment.h"
#include "arc/grid.h"
#include "arc/selection.h"
#include "arc/text_format.h"

namespace nbdist::arc {

// One batch of samples in columnar form; each sample is text or a grid (is_text says which).
struct SampleBatch {
  std::vector<uint8_t> is_text;         // per sample: 1 = texts[i] holds it, 0 = grids[i]
  // Views into strings the caller keeps alive for the duration of Decoder::add.
  std::vector<std::string_view> keys;   // unit key + optional augmentation suffix
  std::vector<std::string_view> texts;  // model output text (when decoding text)
  std::vector<Grid> grids;              // grids given directly (h == 0: not a grid, counted)
  std::vector<double> logprobs;        // per sample: log-probability of the generation (nats)
  std::vector<int64_t> aug_offsets;    // empty, or n + 1 cumulative offsets into aug_values;
                                       // an empty range means no re-scores
  std::vector<double> aug_values;      // re-scoring log-probabilities, concatenated
};

struct AlgoStats {
  double score = 0.0;      // Kaggle score with n_guesses attempts: sum over tasks of solved / tests
  double score_1 = 0.0;    // the same with one attempt
  int n_tasks = 0;         // tasks with a known truth
  int n_units = 0;         // units with a known truth
  int n_oracle = 0;        // units whose truth is among the candidates
  int n_ranked = 0;        // units whose truth appears in this algorithm's ranking
  double rank_sum = 0.0;   // sum of 1-based truth ranks over those units
};

class Decoder {
 public:
  // unit_task[i]: the task index of unit i (a task's units share its Kaggle weight).
  Decoder(std::vector<std::string> unit_keys, std::vector<int32_t> unit_task, int n_guesses,
          TextFormat fmt);

  void set_truth(int unit, Grid truth);
  // Validates the whole batch (keys, finite log-probs, offsets) before ingesting any of it, so a
  // bad batch leaves the decoder unchanged. Returns the number of invalid samples in the batch.
  int add(const SampleBatch& batch);

  std::vector<int32_t> rank(const AlgoSpec& spec, int unit) const;
  // Up to n_guesses grids per unit (keep_order may repeat a grid, as the 2024 notebook did).
  std::vector<std::vector<const Grid*>> select(const AlgoSpec& spec) const;
  AlgoStats evaluate(const AlgoSpec& spec) const;

  int n_units() const { return static_cast<int>(units_.size()); }
  int n_guesses() const { return n_guesses_; }
  const UnitCandidates& unit(int i) const { return units_.at(i); }
  const std::string& unit_key(int i) const { return unit_keys_.at(i); }
  // Candidate index of the truth, -1 when absent or unknown.
  int truth_index(int unit) const { return truth_index_.at(unit); }
  bool has_truth(int unit) const { return truth_.at(unit).has_value(); }
  int64_t n_samples() const { return n_samples_; }
  int64_t n_invalid() const { return n_invalid_; }
  const std::array<int64_t, 6>& decode_failures() const { return decode_failures_; }

 private:
  std::vector<std::string> unit_keys_;
  std::vector<int32_t> unit_task_;
  std::unordered_map<std::string, int> unit_index_;
  int n_tasks_ = 0;
  int n_guesses_;
  TextFormat fmt_;
  std::vector<UnitCandidates> units_;
  std::vector<std::optional<Grid>> truth_;
  std::vector<uint64_t> truth_hash_;
  // Candidate index of each unit's truth (-1: absent or unknown), kept current as candidates
  // arrive, so scoring never re-hashes or re-compares truths.
  std::vector<int32_t> truth_index_;
  DecodeTable table_;  // fmt_'s byte table, built once
  int64_t n_samples_ = 0;
  int64_t n_invalid_ = 0;
  std::array<int64_t, 6> decode_failures_{};  // indexed by DecodeStatus
};

}  // namespace nbdist::arc
