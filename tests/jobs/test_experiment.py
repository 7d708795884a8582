"""``nbdist experiment config.json``: runs through the real CLI, a failing run survived, the
seeded mutate draws, and config errors that name the file and the field."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from nbdist.experiment import ExperimentConfigError, draw, run_experiments, validate

FG = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--steps", type=int, default=1)
p.add_argument("--fail", action="store_true")
a = p.parse_args()
print("fg lr", a.lr, "steps", a.steps, "rank", os.environ["RANK"],
      "hparams", os.environ["NBDIST_HPARAMS"], flush=True)
sys.exit(5 if a.fail else 0)
"""


def write_config(tmp_path, config) -> str:
    (tmp_path / "fg.py").write_text(FG)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_experiment_cli_survives_a_failing_run(tmp_path):
    config = {
        "seed": 3, "cooldown_s": 0.1, "output_dir": "out", "monitor": True,
        "experiments": [
            {"name": "sweep", "foreground": {"script": "fg.py", "hparams": {"lr": 0.5}},
             "mutate": {"lr": {"low": 1e-4, "high": 1e-1, "distribution": "log-uniform"},
                        "steps": {"low": 1, "high": 50, "integer": True}},
             "runs_per_config": 2},
            {"name": "broken", "foreground": {"script": "fg.py", "hparams": {"fail": True}}},
            {"name": "with_load", "mode": "parallel",
             "foreground": {"command": ["sh", "-c", "sleep 0.3; echo fg"]},
             "background": {"command": "sh -c 'echo load $1' x", "restart_delay": 0.05,
                            "grace": 0.5}},
        ],
    }
    path = write_config(tmp_path, config)
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", path],
                          capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr  # one run failed
    assert "3 of 4 runs succeeded" in proc.stdout
    out = tmp_path / "out"
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["experiment"], r["run"], r["status"]) for r in rows] == [
        ("sweep", "0", "succeeded"), ("sweep", "1", "succeeded"), ("broken", "0", "failed"),
        ("with_load", "0", "succeeded")]
    assert "exit code 5" in rows[2]["error"]
    assert int(rows[3]["load_runs"]) >= 1 and rows[3]["mode"] == "parallel"
    lrs = [float(r["lr"]) for r in rows[:2]]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and lrs[0] != lrs[1]
    expected = [draw(validate(config)["experiments"][0]["mutate"], 3, 0, k) for k in (0, 1)]
    assert lrs == [e["foreground"]["lr"] for e in expected]  # seeded: reproducible
    run = json.loads((out / "sweep" / "run_1.json").read_text())
    assert run["status"] == "succeeded" and run["hparams"]["foreground"]["lr"] == lrs[1]
    with open(os.path.join(run["log_dir"], "rank_0.log")) as f:
        log = f.read()
    assert f"fg lr {lrs[1]!r} steps {run['hparams']['foreground']['steps']} rank 0" in log
    broken = json.loads((out / "broken" / "run_0.json").read_text())
    assert broken["status"] == "failed" and "exit code 5" in broken["error"]
    load_run = json.loads((out / "with_load" / "run_0.json").read_text())
    bg = load_run["record"]["background_load"]
    assert bg["runs"] and bg["restarts"] == len(bg["runs"]) - 1
    assert load_run["record"]["energy"]["attribution"] == "combined"


def base():
    return {"experiments": [{"name": "a", "foreground": {"command": "true"}}]}


def with_exp(**fields):
    c = base()
    c["experiments"][0].update(fields)
    return c


@pytest.mark.parametrize("config, message", [
    ([], "cfg.json: the top level must be an object"),
    ({"experiments": []}, "cfg.json: experiments: must be a non-empty list"),
    ({"experiments": [{}]}, "cfg.json: experiments[0].foreground: is required"),
    (with_exp(mode="serial"), "experiments[0].mode: must be one of 'default', 'parallel'"),
    (with_exp(mode="parallel"), "experiments[0].background: is required when mode is "
                                "'parallel'"),
    (with_exp(foreground={"command": "x", "script": "y"}),
     "experiments[0].foreground: give exactly one of 'command' or 'script'"),
    (with_exp(foreground={"command": "x", "gpus": [0], "nprocs": 2}),
     "experiments[0].foreground.nprocs: 2 does not match gpus"),
    (with_exp(mutate={"lr": {"low": 1, "high": 1}}), "experiments[0].mutate.lr: low must be "
                                                     "< high"),
    (with_exp(mutate={"lr": {"low": 0, "high": 1, "distribution": "log-uniform"}}),
     "experiments[0].mutate.lr: low must be > 0 for a log-uniform distribution"),
    (with_exp(mutate={"lr": {"low": 0, "high": 1, "distribution": "normal"}}),
     "experiments[0].mutate.lr.distribution: must be one of"),
    (with_exp(mutate={"background.size": {"low": 0, "high": 1}}),
     "experiments[0].mutate.background.size: targets the background, but the experiment has "
     "none"),
    (with_exp(runs_per_config=0), "experiments[0].runs_per_config: must be >= 1"),
    (with_exp(cooldown_s=-1), "experiments[0].cooldown_s: must be >= 0"),
    (with_exp(cooldown_s=1e300), "experiments[0].cooldown_s: must be <= 86400"),
    (with_exp(colour="red"), "experiments[0]: unknown field(s) colour"),
    ({"experiments": [{"name": "a", "foreground": {"command": "x"}},
                      {"name": "a", "foreground": {"command": "x"}}]},
     "experiments[1].name: 'a' is used by an earlier experiment"),
    (with_exp(name="summary.csv"), "experiments[0].name: 'summary.csv' is taken"),
    (with_exp(name="logs"), "experiments[0].name: 'logs' is taken"),
    (with_exp(foreground={"command": "x", "hparams": {"lr": float("nan")}}),
     "experiments[0].foreground.hparams.lr: must be a finite number"),
    (with_exp(foreground={"command": "x", "env": {"X": float("inf")}}),
     "experiments[0].foreground.env.X: must be a string or finite number"),
    (with_exp(mutate={"my lr": {"low": 1, "high": 2}}),
     "experiments[0].mutate.my lr: bad name 'my lr'"),
])
def test_config_errors_name_the_field(config, message):
    with pytest.raises(ExperimentConfigError) as info:
        validate(config, "cfg.json")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cli_reports_bad_json_and_bad_fields(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"experiments": [')
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bad.json: not valid JSON: line 1" in proc.stderr
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"experiments": [
        {"foreground": {"command": "x"}}, {"foreground": {"command": "x"}},
        {"foreground": {"command": "x"}, "mutate": {"lr": {"low": 2, "high": 1}}}]}))
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "config.json: experiments[2].mutate.lr: low must be < high" in proc.stderr


def test_a_hyperparameter_named_like_a_summary_column_does_not_overwrite_it(tmp_path):
    config = validate({"monitor": False, "experiments": [
        {"name": "clash", "foreground": {"command": ["sh", "-c", "exit 3"],
                                         "hparams": {"status": "ok", "mode": "train", "run": 7}}}]})
    run_experiments(config, str(tmp_path), out=io.StringIO())
    with open(tmp_path / "summary.csv") as f:
        [row] = list(csv.DictReader(f))
    assert (row["status"], row["mode"], row["run"]) == ("failed", "default", "0")
    assert (row["foreground.status"], row["foreground.mode"], row["foreground.run"]) == (
        "ok", "train", "7")


def test_cli_reports_a_non_utf8_config_and_directories_it_cannot_create(tmp_path):
    cfg = tmp_path / "latin1.json"
    cfg.write_bytes('{"experiments": [{"name": "caf\u00e9", "foreground": {"command": "true"}}]}'
                    .encode("latin-1"))
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "latin1.json: not UTF-8 text: byte 0xe9 at offset" in proc.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps(base()))
    (tmp_path / "a_file").write_text("")
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", str(good),
                           "--output-dir", str(tmp_path / "a_file")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot create the directory {tmp_path / 'a_file'}: File exists" in proc.stderr
    assert "Traceback" not in proc.stderr
    long_name = tmp_path / "long.json"
    long_name.write_text(json.dumps(with_exp(name="x" * 300)))
    proc = subprocess.run([sys.executable, "-m", "nbdist.cli", "experiment", str(long_name),
                           "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot create the directory {tmp_path / 'out' / ('x' * 300)}: File name too long" \
        in proc.stderr
    assert not (tmp_path / "out" / "logs").exists()  # refused before the first run


def test_a_background_block_in_mode_default_is_reported_as_not_run(tmp_path):
    config = validate({"monitor": False, "experiments": [
        {"name": "solo", "foreground": {"command": ["true"]},
         "background": {"command": ["sleep", "60"]}}]})
    out = io.StringIO()
    [result] = run_experiments(config, str(tmp_path), out=out)
    assert "'solo' has a background block but mode 'default': the background is not run" in (
        out.getvalue())
    assert result["status"] == "succeeded" and result["background_command"] is None
