"""benchmarks/README.md is what benchmarks/render_readme.py renders from the result files."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmarks_readme_is_rendered_from_results():
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "render_readme.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
