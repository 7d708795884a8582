"""A launcher in its own process, for the tests that interrupt or kill the launcher itself.

usage: parent_script.py START_METHOD LOG_DIR PID_DIR
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import helpers  # noqa: E402

import nbdist  # noqa: E402

method, log_dir, pid_dir = sys.argv[1:4]
nbdist.launch(helpers.sleep_forever, (pid_dir,), nprocs=2, start_method=method,
              log_dir=log_dir, grace=2.0)
