"""ArcDataset: loading, validation messages, split keys, submissions (Kaggle format)."""

import json

import pytest

import nbdist
from nbdist.arc import ArcDataset

KAGGLE = "kaggle-2024"


@pytest.fixture(scope="module")
def bundled():
    return ArcDataset.bundled_evaluation()


def test_bundled_evaluation_matches_the_shared_kaggle_files(bundled, arc_data):
    assert len(bundled.tasks) == 400 and bundled.is_fake
    split = bundled.split_multi_replies()
    assert len(split.keys) == 419 and split.keys[0] == "00576224_0"
    from_shared = ArcDataset.from_file(arc_data / KAGGLE / "arc-agi_evaluation_challenges.json",
                                       arc_data / KAGGLE / "arc-agi_evaluation_solutions.json")
    assert from_shared.tasks == bundled.tasks
    # The per-task ARC-AGI-1 files hold the same tasks and answers.
    from_dir = ArcDataset.from_dir(arc_data / "arc-agi-1" / "evaluation")
    assert from_dir.is_fake and from_dir.tasks == bundled.tasks


def test_test_challenges_have_no_solutions(arc_data):
    ds = ArcDataset.from_file(arc_data / KAGGLE / "arc-agi_test_challenges.json")
    assert not ds.is_fake
    assert ds.truth(ds.unit_keys[0]) is None
    with pytest.raises(nbdist.ArcValueError, match="solutions unknown"):
        ds.validate_submission({})


def test_split_units_carry_one_test_each(bundled):
    split = bundled.split_multi_replies()
    multi = next(t for t, v in bundled.tasks.items() if len(v["test"]) > 1)
    ch = split.challenge(f"{multi}_1")
    assert len(ch["test"]) == 1 and "output" not in ch["test"][0]
    assert ch["test"][0]["input"] == bundled.tasks[multi]["test"][1]["input"]
    assert split.truth(f"{multi}_1") == bundled.tasks[multi]["test"][1]["output"]


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[1]]}], "test": [{"input": [[0]]}]}


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t["train"][0]["output"].append([1, 2]),
     r"c.json: task t1: train\[0\].output row 1 has 2 cells, row 0 has 1"),
    (lambda t: t["train"][0]["input"][1].__setitem__(0, 10),
     r"c.json: task t1: train\[0\].input cell \[1\]\[0\] is 10"),
    (lambda t: t["test"][0].__setitem__("input", []),
     r"c.json: task t1: test\[0\].input has 0 rows"),
    (lambda t: t["test"][0].__setitem__("input", [[0] * 31]),
     r"row 0 has 31 cells \(1..30 allowed\)"),
    (lambda t: t.pop("train"), "c.json: task t1: has no 'train' field"),
    (lambda t: t["train"][0].pop("output"), r"train\[0\] needs 'input' and 'output'"),
    (lambda t: t["train"][0]["input"][0].__setitem__(0, True), "is True"),
])
def test_bad_challenges_name_file_task_and_field(tmp_path, mutate, message):
    task = json.loads(json.dumps(GOOD))
    mutate(task)
    with pytest.raises(nbdist.ArcValueError, match=message):
        ArcDataset.from_file(_write(tmp_path, "c.json", {"t1": task}))


def test_bad_solutions_and_dirs_are_named(tmp_path):
    c = _write(tmp_path, "c.json", {"t1": GOOD})
    with pytest.raises(nbdist.ArcValueError, match="s.json: task t1: has 2 solutions, the task "
                                                  "has 1 tests"):
        ArcDataset.from_file(c, _write(tmp_path, "s.json", {"t1": [[[1]], [[1]]]}))
    with pytest.raises(nbdist.ArcValueError, match="s2.json: task t1: missing"):
        ArcDataset.from_file(c, _write(tmp_path, "s2.json", {}))
    with pytest.raises(nbdist.ArcValueError, match=r"s3.json: task t1: \[0\] row 0 has 0"):
        ArcDataset.from_file(c, _write(tmp_path, "s3.json", {"t1": [[[]]]}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(nbdist.ArcValueError, match="bad.json: not valid JSON"):
        ArcDataset.from_file(tmp_path / "bad.json")
    d = tmp_path / "tasks"
    d.mkdir()
    _write(d, "abc.json", {"train": GOOD["train"], "test": [{"input": [[1, 2], [3]]}]})
    with pytest.raises(nbdist.ArcValueError, match=r"abc.json: task abc: test\[0\].input row 1"):
        ArcDataset.from_dir(d)


def test_submission_round_trip_and_scoring(bundled, tmp_path):
    split = bundled.split_multi_replies()
    results = {}
    for i, k in enumerate(split.keys):
        truth = split.truth(k)
        if i % 3 == 0:
            results[k] = [truth]              # solved on attempt 1
        elif i % 3 == 1:
            results[k] = [[[0]], truth]       # solved on attempt 2
    sub = bundled.get_submission(results)
    assert list(sub) == list(bundled.tasks)
    assert all(set(e) == {"attempt_1", "attempt_2"} for v in sub.values() for e in v)
    score = bundled.validate_submission(sub)
    expected = 0.0
    for tid, task in bundled.tasks.items():
        n = len(task["test"])
        idx = [split.keys.index(f"{tid}_{j}") for j in range(n)]
        expected += sum(1 for j in idx if j % 3 != 2) / n
    assert score.score == pytest.approx(expected)
    assert score.fraction == pytest.approx(expected / 400)
    path = bundled.write_submission(sub, tmp_path / "out" / "submission.json")
    assert bundled.read_submission(path) == sub
    assert not list((tmp_path / "out").glob("*.tmp"))
    empty = bundled.get_submission({})
    assert bundled.validate_submission(empty).score == 0.0
    assert empty["00576224"][0] == {"attempt_1": [[0]], "attempt_2": [[0]]}


def test_bad_submissions_name_task_and_field(bundled, tmp_path):
    sub = bundled.get_submission({})
    bad = dict(sub)
    bad.pop("00576224")
    with pytest.raises(nbdist.ArcValueError, match="submission: task 00576224: missing"):
        bundled.validate_submission(bad)
    bad = dict(sub, extra=[])
    with pytest.raises(nbdist.ArcValueError, match="submission: task extra: not in"):
        bundled.validate_submission(bad)
    multi = next(t for t, v in bundled.tasks.items() if len(v["test"]) > 1)
    bad = dict(sub)
    bad[multi] = sub[multi][:1]
    with pytest.raises(nbdist.ArcValueError, match=f"task {multi}: has 1 entries, the task has"):
        bundled.validate_submission(bad)
    bad = dict(sub)
    bad["00576224"] = [{"attempt_1": [[0]], "attempt_2": [[0]], "attempt_3": [[0]]}]
    with pytest.raises(nbdist.ArcValueError, match=r"\[0\] has other key 'attempt_3'"):
        bundled.validate_submission(bad)
    bad["00576224"] = [{"attempt_1": [[0]]}]
    with pytest.raises(nbdist.ArcValueError, match=r"\[0\] lacks attempt_2"):
        bundled.validate_submission(bad)
    bad["00576224"] = [{"attempt_1": [[0]], "attempt_2": [[0, 1], [2]]}]
    with pytest.raises(nbdist.ArcValueError, match=r"\[0\].attempt_2 row 1 has 1 cells"):
        bundled.validate_submission(bad)
    p = tmp_path / "submission.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(nbdist.ArcValueError, match="submission.json: task 00576224"):
        bundled.read_submission(p)
    with pytest.raises(nbdist.ArcValueError, match="unit 'nope_0': not in"):
        bundled.get_submission({"nope_0": []})


def test_files_that_are_not_utf8_json_are_named(tmp_path):
    (tmp_path / "c.json").write_bytes(b"\x1f\x8b\x08\x00 a gzip file, say")
    with pytest.raises(nbdist.ArcValueError, match="c.json: not UTF-8 text"):
        ArcDataset.from_file(tmp_path / "c.json")


def test_a_task_id_given_twice_is_refused_not_dropped(tmp_path):
    other = {"train": GOOD["train"], "test": [{"input": [[5]]}, {"input": [[6]]}]}
    p = tmp_path / "c.json"
    p.write_text(f'{{"t1": {json.dumps(GOOD)}, "t2": {json.dumps(GOOD)}, '
                 f'"t1": {json.dumps(other)}}}')
    with pytest.raises(nbdist.ArcValueError, match="c.json: key 't1' appears twice"):
        ArcDataset.from_file(p)
    with pytest.raises(nbdist.ArcValueError, match="task 1: appears twice"):
        ArcDataset({1: GOOD, "1": other})
    with pytest.raises(nbdist.ArcValueError, match="challenges must map task ids to tasks"):
        ArcDataset([GOOD])


def test_the_wrong_loader_for_a_layout_says_which_to_use(arc_data):
    with pytest.raises(nbdist.ArcValueError, match="00576224.json: holds a single task.*from_dir"):
        ArcDataset.from_file(arc_data / "arc-agi-1" / "evaluation" / "00576224.json")
    with pytest.raises(nbdist.ArcValueError, match="holds 400 tasks.*from_file"):
        ArcDataset.from_dir(arc_data / KAGGLE)


def test_unit_keys_with_non_ascii_digits_are_unknown_units(bundled):
    split = bundled.split_multi_replies()
    with pytest.raises(nbdist.ArcValueError, match="unit '00576224_\u00b2': no such task test"):
        split.truth("00576224_\u00b2")


def test_results_that_are_not_lists_of_guesses_are_named(bundled):
    truth = bundled.tasks["00576224"]["test"][0]["output"]
    with pytest.raises(nbdist.ArcValueError, match="unit 00576224_0: is a NoneType, not a list"):
        bundled.get_submission({"00576224_0": None})
    # A bare grid used to read as a list of guesses whose first guess is its first row.
    with pytest.raises(nbdist.ArcValueError, match="unit 00576224_0: is one grid.*\\[grid\\]"):
        bundled.get_submission({"00576224_0": truth})
    sub = bundled.get_submission({"00576224_0": (g for g in [truth])})
    assert sub["00576224"][0] == {"attempt_1": truth, "attempt_2": [[0]]}
