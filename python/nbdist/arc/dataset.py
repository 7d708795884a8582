"""ARC-AGI task sets: loading with validation, splitting into units, Kaggle submissions.

A *task* has train pairs and one or more test inputs; a *unit* is one test of one task, keyed
``<task>_<i>`` (the Kaggle 2024 notebook's ``split_multi_replies`` keys). Submissions follow the
Kaggle format ``{task: [{"attempt_1": grid, "attempt_2": grid}, ...one per test in order]}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._errors import ArcValueError
from .._io import atomic_write_json
from ._grids import Grid, check_grid, grid_problem, pack

EMPTY_ATTEMPT: Grid = [[0]]
ATTEMPT_KEYS = ("attempt_1", "attempt_2")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; a task id (or field) given twice is a mistake.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return obj


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise ArcValueError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ArcValueError(f"{path.name}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ArcValueError(f"{path.name}: not UTF-8 text, so not JSON ({e})") from None
    except _DuplicateKey as e:
        raise ArcValueError(f"{path.name}: key {e.args[0]!r} appears twice in one object "
                            f"(task ids and fields must be unique)") from None


def _check_task(task: Any, fname: str, tid: str, need_test_output: bool) -> dict[str, Any]:
    where = f"{fname}: task {tid}:"
    if not isinstance(task, Mapping):
        raise ArcValueError(f"{where} is a {type(task).__name__}, not an object")
    for part in ("train", "test"):
        if part not in task:
            raise ArcValueError(f"{where} has no '{part}' field")
        if not isinstance(task[part], list) or not task[part]:
            raise ArcValueError(f"{where} '{part}' must be a non-empty list")
    out: dict[str, Any] = {"train": [], "test": []}
    for i, pair in enumerate(task["train"]):
        if not isinstance(pair, Mapping) or "input" not in pair or "output" not in pair:
            raise ArcValueError(f"{where} train[{i}] needs 'input' and 'output'")
        out["train"].append({
            "input": check_grid(pair["input"], f"{where} train[{i}].input"),
            "output": check_grid(pair["output"], f"{where} train[{i}].output"),
        })
    for i, pair in enumerate(task["test"]):
        if not isinstance(pair, Mapping) or "input" not in pair:
            raise ArcValueError(f"{where} test[{i}] needs 'input'")
        t = {"input": check_grid(pair["input"], f"{where} test[{i}].input")}
        if "output" in pair:
            t["output"] = check_grid(pair["output"], f"{where} test[{i}].output")
        elif need_test_output:
            raise ArcValueError(f"{where} test[{i}] has no 'output'")
        out["test"].append(t)
    return out


@dataclass
class SubmissionScore:
    """Kaggle score of a submission: ``score`` = Σ over tasks of solved tests / tests."""

    score: float
    n_tasks: int
    per_task: dict[str, float] = field(repr=False)

    @property
    def fraction(self) -> float:
        """``score / n_tasks`` (the leaderboard percentage, as a fraction)."""
        return self.score / self.n_tasks if self.n_tasks else 0.0


class ArcDataset:
    """ARC tasks with optional solutions, validated on load.

    Build with :meth:`from_dir` (one JSON per task: ARC-AGI-1/-2), :meth:`from_file` (the Kaggle
    combined challenges + solutions files) or :meth:`bundled_evaluation` (the Kaggle 2024
    evaluation set shipped with nbdist). ``keys`` are task ids, or unit keys ``<task>_<i>`` after
    :meth:`split_multi_replies`.
    """

    def __init__(self, challenges: Mapping[str, Any], solutions: Mapping[str, Any] | None = None,
                 *, source: str = "<memory>", split: bool = False):
        if not isinstance(challenges, Mapping):
            raise ArcValueError(f"{source}: challenges must map task ids to tasks, got a "
                                f"{type(challenges).__name__}")
        self.source = source
        self.tasks: dict[str, dict[str, Any]] = {}
        for tid, task in challenges.items():
            if str(tid) in self.tasks:
                raise ArcValueError(f"{source}: task {tid}: appears twice")
            self.tasks[str(tid)] = _check_task(task, source, tid, need_test_output=False)
        if solutions is not None:
            self._attach_solutions(solutions, source)
        self.split = split

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, challenges: str | os.PathLike,
                  solutions: str | os.PathLike | None = None) -> ArcDataset:
        """The Kaggle layout: one challenges JSON ``{task: {train, test}}`` and optionally the
        solutions JSON ``{task: [grid per test]}``."""
        cpath = Path(challenges)
        data = _load_json(cpath)
        if not isinstance(data, Mapping):
            raise ArcValueError(f"{cpath.name}: must hold an object mapping task ids to tasks")
        if "train" in data and "test" in data:
            raise ArcValueError(f"{cpath.name}: holds a single task (train and test at the top "
                                f"level); load a folder of such files with ArcDataset.from_dir")
        ds = cls(data, source=cpath.name)
        if solutions is not None:
            spath = Path(solutions)
            sol = _load_json(spath)
            if not isinstance(sol, Mapping):
                raise ArcValueError(f"{spath.name}: must hold an object mapping task ids to lists")
            ds._attach_solutions(sol, spath.name)
        return ds

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ArcDataset:
        """One ``<task>.json`` per task (the ARC-AGI-1/-2 repositories' layout); test outputs,
        when every test has one, become the solutions."""
        root = Path(path)
        if not root.is_dir():
            raise ArcValueError(f"{root}: not a directory")
        files = sorted(root.glob("*.json"))
        if not files:
            raise ArcValueError(f"{root}: holds no .json task files")
        ds = cls({}, source=str(root))
        for f in files:
            data = _load_json(f)
            if (isinstance(data, Mapping) and "train" not in data and data
                    and all(isinstance(t, Mapping) and "train" in t for t in data.values())):
                raise ArcValueError(f"{f.name}: holds {len(data)} tasks (a combined challenges "
                                    f"file); load it with ArcDataset.from_file")
            ds.tasks[f.stem] = _check_task(data, f.name, f.stem, need_test_output=False)
        if all("output" in t for task in ds.tasks.values() for t in task["test"]):
            ds._solutions_known = True
        return ds

    @classmethod
    def bundled_evaluation(cls) -> ArcDataset:
        """The ARC-AGI-1 evaluation set (Kaggle 2024 files: 400 tasks, 419 tests) with solutions,
        bundled with nbdist (Apache-2.0) so demos run without network."""
        root = resources.files("nbdist.arc") / "data"
        with resources.as_file(root) as d:
            return cls.from_file(Path(d) / "arc-agi_evaluation_challenges.json",
                                 Path(d) / "arc-agi_evaluation_solutions.json")

    def _attach_solutions(self, solutions: Mapping[str, Any], fname: str) -> None:
        for tid, task in self.tasks.items():
            if tid not in solutions:
                raise ArcValueError(f"{fname}: task {tid}: missing (the challenges have it)")
            sol = solutions[tid]
            if not isinstance(sol, list) or len(sol) != len(task["test"]):
                n = len(sol) if isinstance(sol, list) else type(sol).__name__
                raise ArcValueError(f"{fname}: task {tid}: has {n} solutions, "
                                    f"the task has {len(task['test'])} tests")
            for i, g in enumerate(sol):
                task["test"][i]["output"] = check_grid(g, f"{fname}: task {tid}: [{i}]")
        extra = sorted(set(solutions) - set(self.tasks))
        if extra:
            raise ArcValueError(f"{fname}: task {extra[0]}: not in the challenges")
        self._solutions_known = True

    _solutions_known = False

    # ------------------------------------------------------------------ views
    @property
    def is_fake(self) -> bool:
        """True when the solutions are known (an evaluation split, the public placeholder)."""
        return self._solutions_known

    def split_multi_replies(self) -> ArcDataset:
        """The same tasks keyed per test: task ``k`` with n tests gives ``k_0 .. k_{n-1}``."""
        ds = ArcDataset.__new__(ArcDataset)
        ds.source, ds.tasks, ds.split = self.source, self.tasks, True
        for cache in ("_units_cache", "_decoder_cache"):
            if cache in self.__dict__:
                ds.__dict__[cache] = self.__dict__[cache]
        ds._solutions_known = self._solutions_known
        return ds

    @property
    def task_ids(self) -> list[str]:
        return list(self.tasks)

    @property
    def unit_keys(self) -> list[str]:
        """``<task>_<i>`` for every test of every task, in file order."""
        return [key for key, _, _ in self._units()]

    def _units(self) -> list[tuple[str, str, int]]:
        # (unit key, task id, test index), computed once: tasks are not changed after loading.
        units = self.__dict__.get("_units_cache")
        if units is None:
            units = [(f"{tid}_{i}", tid, i) for tid, t in self.tasks.items()
                     for i in range(len(t["test"]))]
            self.__dict__["_units_cache"] = units
        return units

    def _decoder_inputs(self) -> tuple[list[str], list[int], list[int], bytes, list[int]]:
        # (unit keys, task index per unit, units with a known truth, their truths packed),
        # computed once like _units(): a Decoder per run then costs no grid conversion.
        cached = self.__dict__.get("_decoder_cache")
        if cached is None:
            units = self._units()
            task_ids: dict[str, int] = {}
            keys = [key for key, _, _ in units]
            tasks = [task_ids.setdefault(tid, len(task_ids)) for _, tid, _ in units]
            known = [(u, t["output"]) for u, t in enumerate(
                t for task in self.tasks.values() for t in task["test"]) if "output" in t]
            cells, shapes = pack([g for _, g in known])  # validated when loaded
            cached = (keys, tasks, [u for u, _ in known], cells, shapes)
            self.__dict__["_decoder_cache"] = cached
        return cached

    @property
    def keys(self) -> list[str]:
        """Unit keys after :meth:`split_multi_replies`, task ids before."""
        return self.unit_keys if self.split else self.task_ids

    def __len__(self) -> int:
        return len(self.keys)

    def _unit(self, key: str):
        tid, _, idx = key.rpartition("_")
        task = self.tasks.get(tid)
        # isdigit() alone admits '²', which int() rejects.
        if (task is None or not (idx.isascii() and idx.isdigit())
                or int(idx) >= len(task["test"])):
            raise ArcValueError(f"{self.source}: unit {key!r}: no such task test")
        return tid, int(idx), task

    def challenge(self, key: str) -> dict[str, Any]:
        """Train pairs and test input(s) of a task id, or of one unit key (a single test)."""
        if self.split or key not in self.tasks:
            tid, i, task = self._unit(key)
            return {"train": task["train"], "test": [{"input": task["test"][i]["input"]}]}
        return {"train": self.tasks[key]["train"],
                "test": [{"input": t["input"]} for t in self.tasks[key]["test"]]}

    def truth(self, unit_key: str) -> Grid | None:
        """The solution grid of a unit, or None when unknown."""
        _, i, task = self._unit(unit_key)
        return task["test"][i].get("output")

    # ------------------------------------------------------------------ submissions
    def get_submission(self, results: Mapping[str, Sequence[Any]]) -> dict[str, list[dict]]:
        """Kaggle submission from ``{unit_key: [grid, ...]}`` (best first; e.g. the output of
        :meth:`Decoder.run_selection_algo`). Missing units and attempts become ``[[0]]``."""
        known = set(self.unit_keys)
        for key in results:
            if key not in known:
                raise ArcValueError(f"results: unit {key!r}: not in {self.source}")
        sub: dict[str, list[dict]] = {}
        for tid, task in self.tasks.items():
            entries = []
            for i in range(len(task["test"])):
                guesses = results.get(f"{tid}_{i}", ())
                if isinstance(guesses, (str, bytes, Mapping)) or not isinstance(guesses,
                                                                                Iterable):
                    raise ArcValueError(f"results: unit {tid}_{i}: is a "
                                        f"{type(guesses).__name__}, not a list of guesses")
                guesses = (guesses.tolist() if hasattr(guesses, "tolist")
                           and not isinstance(guesses, (list, tuple)) else list(guesses))
                if guesses and grid_problem(guesses) is None:
                    raise ArcValueError(f"results: unit {tid}_{i}: is one grid, not a list of "
                                        f"guesses (wrap it: [grid])")
                entry = {}
                for a, name in enumerate(ATTEMPT_KEYS):
                    g = guesses[a] if a < len(guesses) else EMPTY_ATTEMPT
                    entry[name] = check_grid(g, f"results: unit {tid}_{i}: guess {a}")
                entries.append(entry)
            sub[tid] = entries
        return sub

    def check_submission(self, submission: Mapping[str, Any], fname: str = "submission") -> None:
        """Raises ArcValueError naming file, task and field unless ``submission`` has exactly
        this dataset's tasks, one entry per test, each with attempt_1 and attempt_2 grids."""
        if not isinstance(submission, Mapping):
            raise ArcValueError(f"{fname}: must be an object mapping task ids to lists")
        for tid in submission:
            if tid not in self.tasks:
                raise ArcValueError(f"{fname}: task {tid}: not in {self.source}")
        for tid, task in self.tasks.items():
            if tid not in submission:
                raise ArcValueError(f"{fname}: task {tid}: missing")
            entries = submission[tid]
            n = len(task["test"])
            if not isinstance(entries, list) or len(entries) != n:
                got = len(entries) if isinstance(entries, list) else type(entries).__name__
                raise ArcValueError(f"{fname}: task {tid}: has {got} entries, "
                                    f"the task has {n} tests")
            for i, e in enumerate(entries):
                if not isinstance(e, Mapping):
                    raise ArcValueError(f"{fname}: task {tid}: [{i}] is not an object")
                keys = set(e)
                if keys != set(ATTEMPT_KEYS):
                    missing = sorted(set(ATTEMPT_KEYS) - keys)
                    other = sorted(keys - set(ATTEMPT_KEYS))
                    what = f"lacks {missing[0]}" if missing else f"has other key {other[0]!r}"
                    raise ArcValueError(f"{fname}: task {tid}: [{i}] {what}")
                for name in ATTEMPT_KEYS:
                    problem = grid_problem(e[name])
                    if problem is not None:
                        raise ArcValueError(f"{fname}: task {tid}: [{i}].{name} {problem}")

    def validate_submission(self, submission: Mapping[str, Any],
                            fname: str = "submission") -> SubmissionScore:
        """Checks the submission's structure and scores it against the known solutions: per
        task, solved tests / tests (a test is solved when either attempt equals the truth)."""
        if not self.is_fake:
            raise ArcValueError(f"{self.source}: solutions unknown, cannot score a submission")
        self.check_submission(submission, fname)
        per_task: dict[str, float] = {}
        for tid, task in self.tasks.items():
            solved = 0
            for i, t in enumerate(task["test"]):
                e = submission[tid][i]
                truth = t["output"]
                if any(_same(e[a], truth) for a in ATTEMPT_KEYS):
                    solved += 1
            per_task[tid] = solved / len(task["test"])
        return SubmissionScore(sum(per_task.values()), len(per_task), per_task)

    def write_submission(self, submission: Mapping[str, Any], path: str | os.PathLike) -> Path:
        """Checks, then writes ``submission.json`` atomically (tmp file, fsync, rename)."""
        self.check_submission(submission)
        return write_json_atomic(submission, path)

    def read_submission(self, path: str | os.PathLike) -> dict[str, Any]:
        """Reads and structurally checks a submission file against this dataset."""
        p = Path(path)
        sub = _load_json(p)
        self.check_submission(sub, p.name)
        return sub

    def __repr__(self) -> str:
        n_tests = sum(len(t["test"]) for t in self.tasks.values())
        return (f"ArcDataset({self.source!r}, {len(self.tasks)} tasks, {n_tests} tests, "
                f"solutions={'yes' if self.is_fake else 'no'}, split={self.split})")


def _same(a: Any, b: Grid) -> bool:
    return [list(r) for r in a] == b


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Writes JSON so that ``path`` holds either the old file or the whole new one."""
    return Path(atomic_write_json(path, obj, separators=(",", ":")))


def iter_grids(ds: ArcDataset) -> Iterable[Grid]:
    """Every grid of every task (train inputs/outputs, test inputs and known outputs)."""
    for task in ds.tasks.values():
        for pair in task["train"]:
            yield pair["input"]
            yield pair["output"]
        for t in task["test"]:
            yield t["input"]
            if "output" in t:
                yield t["output"]
