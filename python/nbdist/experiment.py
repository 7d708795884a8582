"""``nbdist experiment config.json``: foreground/background experiments from a JSON config.

Each experiment runs a foreground program (the work being measured: a training script) alone
(``mode: "default"``) or beside a restarting background load (``mode: "parallel"``, the load
started first, stopped as soon as the foreground ends; see :class:`nbdist.Load`),
``runs_per_config`` times, with hyperparameters optionally drawn at random per run (``mutate``,
seeded). Every run writes ``<output_dir>/<experiment>/run_<k>.json`` (atomically) and one row of
``<output_dir>/summary.csv``; a run that fails is recorded as failed and the next one starts.

Config format (JSON; only ``experiments`` and each one's ``foreground`` are required)::

    {
      "output_dir": "runs/fgbg",        // default: nbdist-experiments/<config file stem>,
                                        //   relative paths are relative to the config file
      "seed": 0,                        // seeds every mutate draw (default 0)
      "runs_per_config": 1,             // default for every experiment
      "cooldown_s": 0,                  // seconds of idle between consecutive runs
      "monitor": true,                  // sample GPU energy (recorded as "combined")
      "experiments": [
        {
          "name": "train+load",         // default: exp<i>; unique; used as a directory name
          "mode": "parallel",           // "default": foreground alone; "parallel": with load
          "foreground": {
            "script": "train.py",       // run with this Python, or "command": "prog --x 1"
                                        //   (a string, split like a shell would, or a list)
            "hparams": {"lr": 0.001, "steps": 100},  // appended as --lr 0.001 --steps 100
                                        //   (true: --flag, false/null: omitted)
            "nprocs": 1, "gpus": [0],   // ranks (default: 1, or one per GPU) and GPU indices
            "env": {"X": "1"},          // extra environment variables
            "timeout_s": 600            // default: none
          },
          "background": {               // required when mode is "parallel"
            "command": "python stress.py", "hparams": {"size": 4096}, "gpus": [1],
            "env": {}, "restart": true, "restart_delay": 2, "warmup": 5, "grace": 5
          },
          "mutate": {                   // hyperparameters drawn per run
            "lr": {"low": 1e-4, "high": 1e-2, "distribution": "log-uniform"},
            "steps": {"low": 50, "high": 200, "distribution": "uniform", "integer": true},
            "background.size": {"low": 1024, "high": 8192, "integer": true}
          },                            // "name" targets the foreground, "background.name" the load
          "runs_per_config": 3,
          "cooldown_s": 10
        }
      ]
    }

Both foreground and background see ``NBDIST_HPARAMS`` (their hyperparameters as JSON) besides
the command-line flags. The foreground gets the usual rank environment (RANK, WORLD_SIZE,
MASTER_PORT...).
Exit status of the command: 0 when every run succeeded, 1 when some run failed, 2 for a bad config
or a directory (``output_dir`` or an experiment's) that cannot be created.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shlex
import sys
import time
from typing import Any

from ._errors import NbdistValueError
from ._io import atomic_write

MODES = ("default", "parallel")
DISTRIBUTIONS = ("uniform", "log-uniform")
_MAX_COOLDOWN_S = 86400.0
_TOP_KEYS = {"output_dir", "seed", "runs_per_config", "cooldown_s", "monitor", "experiments"}
_EXP_KEYS = {"name", "mode", "foreground", "background", "mutate", "runs_per_config",
             "cooldown_s", "monitor"}
_FG_KEYS = {"command", "script", "hparams", "nprocs", "gpus", "env", "timeout_s"}
_BG_KEYS = {"command", "script", "hparams", "gpus", "env", "restart", "restart_delay", "warmup",
            "grace"}
_MUTATE_KEYS = {"low", "high", "distribution", "integer"}
# Beside the experiments' directories in output_dir (see run_experiments).
_LOG_DIR, _SUMMARY = "logs", "summary.csv"
_RESERVED_NAMES = {_LOG_DIR, _SUMMARY}


class ExperimentConfigError(NbdistValueError):
    """A bad experiment config; the message names the file and the field."""


# -- validation -----------------------------------------------------------------------------------

class _Checker:
    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, where: str, what: str):
        raise ExperimentConfigError(f"{self.source}: {where}: {what}" if where
                                    else f"{self.source}: {what}")

    def keys(self, where: str, obj: dict, allowed: set) -> None:
        extra = sorted(set(obj) - allowed)
        if extra:
            self.fail(where, f"unknown field(s) {', '.join(extra)} (allowed: "
                             f"{', '.join(sorted(allowed))})")

    def number(self, where: str, value, minimum: float | None = None, integer: bool = False,
               maximum: float | None = None):
        ok = (isinstance(value, int) if integer else isinstance(value, (int, float)))
        if isinstance(value, bool) or not ok or (isinstance(value, float)
                                                 and not math.isfinite(value)):
            self.fail(where, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
        if minimum is not None and value < minimum:
            self.fail(where, f"must be >= {minimum:g}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(where, f"must be <= {maximum:g}, got {value!r}")
        return value

    def program(self, where: str, obj: dict) -> list[str]:
        has_cmd, has_script = "command" in obj, "script" in obj
        if has_cmd == has_script:
            self.fail(where, "give exactly one of 'command' or 'script'")
        if has_script:
            s = obj["script"]
            if not isinstance(s, str) or not s:
                self.fail(f"{where}.script", f"must be a path, got {s!r}")
            if self.base_dir is not None and not os.path.isabs(s):
                s = os.path.join(self.base_dir, s)  # relative to the config file
            return [sys.executable, s]
        c = obj["command"]
        if isinstance(c, str):
            try:
                argv = shlex.split(c)
            except ValueError as exc:
                self.fail(f"{where}.command", f"cannot be split: {exc}")
        elif isinstance(c, list) and all(isinstance(a, str) for a in c):
            argv = list(c)
        else:
            self.fail(f"{where}.command", f"must be a string or a list of strings, got {c!r}")
        if not argv:
            self.fail(f"{where}.command", "is empty")
        return argv

    def flag_name(self, where: str, name: str) -> None:
        """A hyperparameter name becomes ``--name``: one argv word, not an option of its own."""
        if not name or name.startswith("-") or "=" in name or any(c.isspace() for c in name):
            self.fail(where, f"bad name {name!r} (it becomes the flag --{name})")

    def hparams(self, where: str, obj: dict) -> dict:
        hp = obj.get("hparams", {})
        if not isinstance(hp, dict):
            self.fail(f"{where}.hparams", f"must be an object, got {type(hp).__name__}")
        for k, v in hp.items():
            self.flag_name(f"{where}.hparams", k)
            # json.loads takes NaN and Infinity, which the run's JSON (strict) cannot hold.
            if not (v is None or isinstance(v, (bool, int, str))
                    or (isinstance(v, float) and math.isfinite(v))):
                self.fail(f"{where}.hparams.{k}", f"must be a finite number, string, bool or "
                                                  f"null, got {v!r}")
        return dict(hp)

    def gpus(self, where: str, value):
        if value is None:
            return None
        if not isinstance(value, list) or not value or any(
                isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in value):
            self.fail(where, f"must be a non-empty list of GPU indices, got {value!r}")
        if len(set(value)) != len(value):
            self.fail(where, f"lists a GPU twice: {value!r}")
        return list(value)

    def env(self, where: str, value) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {type(value).__name__}")
        for k, v in value.items():
            if not k or "=" in k:
                self.fail(where, f"bad variable name {k!r}")
            if (not isinstance(v, (str, int, float)) or isinstance(v, bool)
                    or (isinstance(v, float) and not math.isfinite(v))):
                self.fail(f"{where}.{k}", f"must be a string or finite number, got {v!r}")
        return {k: str(v) for k, v in value.items()}


def validate(config: Any, source: str = "config", base_dir: str | None = None) -> dict:
    """Checks a config (the parsed JSON) and returns it normalized; raises
    :class:`ExperimentConfigError` naming ``source`` and the field. Relative ``script`` paths
    are taken relative to ``base_dir`` (the config file's directory) when given."""
    ck = _Checker(source, base_dir)
    if not isinstance(config, dict):
        ck.fail("", f"the top level must be an object, got {type(config).__name__}")
    ck.keys("(top level)", config, _TOP_KEYS)
    seed = ck.number("seed", config.get("seed", 0), integer=True)
    runs_default = ck.number("runs_per_config", config.get("runs_per_config", 1), 1, True)
    # time.sleep overflows past ~292 years; a day between runs is more than any cool-down needs.
    cool_default = ck.number("cooldown_s", config.get("cooldown_s", 0), 0, maximum=_MAX_COOLDOWN_S)
    monitor_default = config.get("monitor", True)
    if not isinstance(monitor_default, bool):
        ck.fail("monitor", f"must be true or false, got {monitor_default!r}")
    out_dir = config.get("output_dir")
    if out_dir is not None and (not isinstance(out_dir, str) or not out_dir):
        ck.fail("output_dir", f"must be a path, got {out_dir!r}")
    exps = config.get("experiments")
    if not isinstance(exps, list) or not exps:
        ck.fail("experiments", "must be a non-empty list")
    names = set()
    norm = []
    for i, e in enumerate(exps):
        w = f"experiments[{i}]"
        if not isinstance(e, dict):
            ck.fail(w, f"must be an object, got {type(e).__name__}")
        ck.keys(w, e, _EXP_KEYS)
        name = e.get("name", f"exp{i}")
        if (not isinstance(name, str) or not name or "/" in name or "\0" in name
                or name.startswith(".")):
            ck.fail(f"{w}.name", f"must be a non-empty name usable as a directory, got {name!r}")
        if name in _RESERVED_NAMES:
            ck.fail(f"{w}.name", f"{name!r} is taken by the output directory's "
                                 f"{'job logs' if name == 'logs' else 'summary'}")
        if name in names:
            ck.fail(f"{w}.name", f"{name!r} is used by an earlier experiment")
        names.add(name)
        mode = e.get("mode", "default")
        if mode not in MODES:
            ck.fail(f"{w}.mode", f"must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        fg = e.get("foreground")
        if not isinstance(fg, dict):
            ck.fail(f"{w}.foreground", "is required (an object with 'command' or 'script')")
        ck.keys(f"{w}.foreground", fg, _FG_KEYS)
        fg_n = {"argv": ck.program(f"{w}.foreground", fg),
                "hparams": ck.hparams(f"{w}.foreground", fg),
                "gpus": ck.gpus(f"{w}.foreground.gpus", fg.get("gpus")),
                "env": ck.env(f"{w}.foreground.env", fg.get("env")),
                "timeout_s": None}
        nprocs = fg.get("nprocs")
        if nprocs is not None:
            ck.number(f"{w}.foreground.nprocs", nprocs, 1, True)
            if fg_n["gpus"] is not None and nprocs != len(fg_n["gpus"]):
                ck.fail(f"{w}.foreground.nprocs", f"{nprocs} does not match gpus "
                                                  f"{fg_n['gpus']} (one rank per GPU)")
        fg_n["nprocs"] = nprocs or (len(fg_n["gpus"]) if fg_n["gpus"] else 1)
        if fg.get("timeout_s") is not None:
            fg_n["timeout_s"] = ck.number(f"{w}.foreground.timeout_s", fg["timeout_s"], 0)
            if fg_n["timeout_s"] <= 0:
                ck.fail(f"{w}.foreground.timeout_s", "must be > 0")
        bg = e.get("background")
        bg_n = None
        if bg is not None:
            if not isinstance(bg, dict):
                ck.fail(f"{w}.background", f"must be an object, got {type(bg).__name__}")
            ck.keys(f"{w}.background", bg, _BG_KEYS)
            bg_n = {"argv": ck.program(f"{w}.background", bg),
                    "hparams": ck.hparams(f"{w}.background", bg),
                    "gpus": ck.gpus(f"{w}.background.gpus", bg.get("gpus")),
                    "env": ck.env(f"{w}.background.env", bg.get("env"))}
            restart = bg.get("restart", True)
            if not isinstance(restart, bool):
                ck.fail(f"{w}.background.restart", f"must be true or false, got {restart!r}")
            bg_n["restart"] = restart
            for key, default in (("restart_delay", 2.0), ("warmup", 0.0), ("grace", 5.0)):
                bg_n[key] = float(ck.number(f"{w}.background.{key}", bg.get(key, default), 0))
        if mode == "parallel" and bg_n is None:
            ck.fail(f"{w}.background", "is required when mode is 'parallel'")
        mutate = e.get("mutate", {})
        if not isinstance(mutate, dict):
            ck.fail(f"{w}.mutate", f"must be an object, got {type(mutate).__name__}")
        mut_n = {}
        for key, spec in mutate.items():
            mw = f"{w}.mutate.{key}"
            side, _, hp = key.rpartition(".")
            if side not in ("", "background", "foreground") or not hp:
                ck.fail(mw, "name a hyperparameter as 'name' (foreground) or "
                            "'background.name'")
            ck.flag_name(mw, hp)
            if side == "background" and bg_n is None:
                ck.fail(mw, "targets the background, but the experiment has none")
            if not isinstance(spec, dict):
                ck.fail(mw, "must be an object with low and high")
            ck.keys(mw, spec, _MUTATE_KEYS)
            if "low" not in spec or "high" not in spec:
                ck.fail(mw, "needs both low and high")
            low = ck.number(f"{mw}.low", spec["low"])
            high = ck.number(f"{mw}.high", spec["high"])
            if not low < high:
                ck.fail(mw, "low must be < high")
            dist = spec.get("distribution", "uniform")
            if dist not in DISTRIBUTIONS:
                choices = ", ".join(map(repr, DISTRIBUTIONS))
                ck.fail(f"{mw}.distribution", f"must be one of {choices}, got {dist!r}")
            if dist == "log-uniform" and low <= 0:
                ck.fail(mw, "low must be > 0 for a log-uniform distribution")
            integer = spec.get("integer", False)
            if not isinstance(integer, bool):
                ck.fail(f"{mw}.integer", f"must be true or false, got {integer!r}")
            if integer and math.floor(high) < math.ceil(low):
                ck.fail(mw, "holds no integer between low and high")
            mut_n[key] = {"side": side or "foreground", "name": hp, "low": low, "high": high,
                          "distribution": dist, "integer": integer}
        monitor = e.get("monitor", monitor_default)
        if not isinstance(monitor, bool):
            ck.fail(f"{w}.monitor", f"must be true or false, got {monitor!r}")
        norm.append({
            "name": name, "mode": mode, "foreground": fg_n, "background": bg_n,
            "mutate": mut_n, "monitor": monitor,
            "runs_per_config": ck.number(f"{w}.runs_per_config",
                                         e.get("runs_per_config", runs_default), 1, True),
            "cooldown_s": float(ck.number(f"{w}.cooldown_s", e.get("cooldown_s", cool_default),
                                          0, maximum=_MAX_COOLDOWN_S)),
        })
    return {"seed": seed, "output_dir": out_dir, "experiments": norm}


def load_config(path: str) -> dict:
    """Reads and validates a config file (errors name the file and the field)."""
    try:
        with open(path, encoding="utf-8") as f:  # JSON is UTF-8 whatever the locale
            text = f.read()
    except OSError as exc:
        raise ExperimentConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ExperimentConfigError(f"{path}: not UTF-8 text: byte {exc.object[exc.start]:#04x} "
                                    f"at offset {exc.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExperimentConfigError(f"{path}: not valid JSON: line {exc.lineno} column "
                                    f"{exc.colno}: {exc.msg}") from None
    return validate(data, os.path.basename(path), os.path.dirname(os.path.abspath(path)))


# -- runs -----------------------------------------------------------------------------------------

def draw(mutate: dict, seed: int, exp_index: int, run: int) -> dict:
    """The mutated hyperparameters of one run: {"foreground": {...}, "background": {...}}.
    Depends only on (seed, experiment index, run), so a rerun draws the same values."""
    rng = random.Random(f"nbdist-experiment:{seed}:{exp_index}:{run}")
    out: dict = {"foreground": {}, "background": {}}
    for key in sorted(mutate):
        m = mutate[key]
        if m["distribution"] == "log-uniform":
            v = math.exp(rng.uniform(math.log(m["low"]), math.log(m["high"])))
        else:
            v = rng.uniform(m["low"], m["high"])
        if m["integer"]:
            v = min(max(round(v), math.ceil(m["low"])), math.floor(m["high"]))
        out[m["side"]][m["name"]] = v
    return out


def hparam_args(hparams: dict) -> list[str]:
    args = []
    for k, v in hparams.items():
        if v is None or v is False:
            continue
        args.append(f"--{k}")
        if v is not True:
            args.append(repr(v) if isinstance(v, float) else str(v))
    return args


def _run_one(exp: dict, hp: dict, log_dir: str) -> tuple:
    """Runs one foreground (and its load); returns (job or None, error or None)."""
    from .job import Job
    from .launch import _plan
    from .load import Load, attach

    fg = exp["foreground"]
    env = dict(fg["env"])
    env["NBDIST_HPARAMS"] = json.dumps(hp["foreground"])
    plan = _plan(None, (), None, fg["nprocs"], start_method="spawn", gpus=fg["gpus"], env=env,
                 timeout=fg["timeout_s"], max_restarts=0, log_dir=log_dir,
                 master_addr="127.0.0.1", master_port=None, nnodes=1, node_rank=0,
                 stream=False, grace=5.0, argv=fg["argv"] + hparam_args(hp["foreground"]),
                 caller="nbdist experiment")
    load = None
    if exp["mode"] == "parallel":
        bg = exp["background"]
        benv = dict(bg["env"])
        benv["NBDIST_HPARAMS"] = json.dumps(hp["background"])
        load = Load(bg["argv"] + hparam_args(hp["background"]), gpus=bg["gpus"],
                    restart=bg["restart"], restart_delay=bg["restart_delay"],
                    warmup=bg["warmup"], grace=bg["grace"], env=benv)
    job = Job(plan)
    attach(job, monitor=exp["monitor"], background_load=load)
    job._start()
    try:
        job.wait()
    except KeyboardInterrupt:
        job.kill(grace=1.0)
        raise
    except Exception as exc:
        return job, exc
    return job, None


_CSV_FIXED = ["experiment", "run", "mode", "status", "elapsed_s", "energy_j", "energy_reason",
              "load_runs", "load_restarts", "load_exit_codes", "json", "error"]


def _write_csv_atomic(path: str, rows: list[dict]) -> None:
    hp_cols = sorted({k for r in rows for k in r if k not in _CSV_FIXED})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIXED + hp_cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write(path, buf.getvalue(), newline="")


def run_experiments(config: dict, output_dir: str, out=None) -> list[dict]:
    """Runs a validated config (see :func:`validate`); returns one dict per run (what the JSON
    files hold). Never raises for a failed run: it is recorded and the next run starts. A
    directory it cannot create raises ExperimentConfigError before the first run."""
    from .load import write_json_atomic

    out = out if out is not None else sys.stdout
    log_dir = os.path.join(output_dir, _LOG_DIR)
    # Every directory before the first run: a name the file system refuses (too long, not
    # encodable) is a config error now, not a traceback that ends the experiment after a run.
    for d in ([output_dir] + [os.path.join(output_dir, e["name"]) for e in config["experiments"]]
              + [log_dir]):
        try:
            os.makedirs(d, exist_ok=True)
        except (OSError, UnicodeError) as exc:
            why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
            raise ExperimentConfigError(f"cannot create the directory {d}: {why}") from None
    # A background block is kept in mode "default" (switching the mode back and forth is one word)
    # but not run: say so, rather than let a load that never ran look like one that did nothing.
    for e in config["experiments"]:
        if e["mode"] == "default" and e["background"] is not None:
            print(f"nbdist experiment: {e['name']!r} has a background block but mode 'default': "
                  "the background is not run (mode 'parallel' runs it)", file=out, flush=True)
    csv_path = os.path.join(output_dir, _SUMMARY)
    rows: list[dict] = []
    results: list[dict] = []
    plan = [(i, e, k) for i, e in enumerate(config["experiments"])
            for k in range(e["runs_per_config"])]
    for n, (i, exp, k) in enumerate(plan):
        if n > 0:
            cool = plan[n - 1][1]["cooldown_s"]
            if cool > 0:
                print(f"nbdist experiment: cooling down {cool:g} s", file=out, flush=True)
                time.sleep(cool)
        hp_drawn = draw(exp["mutate"], config["seed"], i, k)
        hp = {"foreground": {**exp["foreground"]["hparams"], **hp_drawn["foreground"]},
              "background": {**(exp["background"] or {}).get("hparams", {}),
                             **hp_drawn["background"]}}
        t0 = time.time()
        try:
            job, error = _run_one(exp, hp, log_dir)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # could not even start: still a recorded, failed run
            job, error = None, exc
        record = job.record if job is not None else None
        status = job.status if job is not None else "failed"
        json_path = os.path.join(output_dir, exp["name"], f"run_{k}.json")
        result = {
            "experiment": exp["name"], "index": i, "run": k, "mode": exp["mode"],
            "seed": config["seed"], "hparams": hp, "drawn": hp_drawn,
            "foreground_command": shlex.join(exp["foreground"]["argv"]
                                             + hparam_args(hp["foreground"])),
            "background_command": None if exp["mode"] != "parallel" else shlex.join(
                exp["background"]["argv"] + hparam_args(hp["background"])),
            "status": status, "started": t0, "elapsed_s": round(time.time() - t0, 3),
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "log_dir": None if job is None else job.log_dir, "record": record,
        }
        write_json_atomic(json_path, result)
        results.append(result)
        energy = (record or {}).get("energy") or {}
        load = (record or {}).get("background_load") or {}
        row = {"experiment": exp["name"], "run": k, "mode": exp["mode"], "status": status,
               "elapsed_s": (record or {}).get("elapsed_s", result["elapsed_s"]),
               "energy_j": energy.get("total_j"), "energy_reason": energy.get("reason"),
               "load_runs": len(load.get("runs", [])) if load else "",
               "load_restarts": load.get("restarts", "") if load else "",
               "load_exit_codes": " ".join(str(c) for c in load.get("exit_codes", []))
               if load else "",
               "json": os.path.relpath(json_path, output_dir),
               "error": "" if error is None else str(error).splitlines()[0]}
        for side, prefix in (("foreground", ""), ("background", "background.")):
            for name, v in hp[side].items():
                # A foreground "mode" or "status" must not overwrite the run's own column.
                column = prefix + name if prefix + name not in _CSV_FIXED else f"{side}.{name}"
                row[column] = v
        rows.append(row)
        _write_csv_atomic(csv_path, rows)
        print(f"nbdist experiment: {exp['name']} run {k}: {status} in {row['elapsed_s']} s"
              + (f" ({row['error']})" if row["error"] else ""), file=out, flush=True)
    return results


def main_cli(args) -> int:
    """``nbdist experiment CONFIG [--output-dir D]`` (called by nbdist.cli)."""
    try:
        config = load_config(args.config)
    except ExperimentConfigError as exc:
        print(f"nbdist experiment: {exc}", file=sys.stderr)
        return 2
    base = os.path.dirname(os.path.abspath(args.config))
    output_dir = args.output_dir or config["output_dir"] or os.path.join(
        "nbdist-experiments", os.path.splitext(os.path.basename(args.config))[0])
    if not os.path.isabs(output_dir) and not args.output_dir:
        output_dir = os.path.join(base, output_dir)
    try:
        results = run_experiments(config, output_dir)
    except ExperimentConfigError as exc:  # a directory it cannot create
        print(f"nbdist experiment: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbdist experiment: interrupted", file=sys.stderr)
        return 130
    failed = [r for r in results if r["status"] != "succeeded"]
    print(f"nbdist experiment: {len(results) - len(failed)} of {len(results)} runs succeeded; "
          f"summary {os.path.join(output_dir, 'summary.csv')}", flush=True)
    return 1 if failed else 0


def add_parser(sub) -> None:
    """Adds ``experiment`` to the CLI's subcommands."""
    p = sub.add_parser("experiment", help="run foreground/background experiments from a JSON "
                                          "config (see python -m pydoc nbdist.experiment)")
    p.add_argument("config", help="the JSON config file")
    p.add_argument("--output-dir", default=None,
                   help="where run JSONs and summary.csv go (overrides the config)")
