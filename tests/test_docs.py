"""The documentation site builds without a warning, as CI builds it.

Skipped where the docs extra is not installed, so the test suite checks the site wherever
``python -m pip install ".[docs]"`` was run.
"""

import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOT_INSTALLED = 'the docs extra is not installed (python -m pip install ".[docs]")'


def test_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason=NOT_INSTALLED)
    pytest.importorskip("myst_parser", reason=NOT_INSTALLED)
    # A process of its own: Sphinx imports every documented module and configures logging,
    # which the other tests of this process should not inherit.
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=100,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    for page in ("index", "guide", "coming-from-wfl", "howto-pipeline", "api/autoparallelize"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    # the how-to pages join the site by the toctree's glob
    index = (tmp_path / "html" / "index.html").read_text()
    for howto in sorted(DOCS.glob("howto-*.md")):
        assert f'href="{howto.stem}.html"' in index, howto.name
