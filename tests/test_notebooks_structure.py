"""Every notebook follows the course's shape (course-style.md); nbval runs them, this reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))
HARD_CODED_HOST = re.compile(r"(localhost|127\.0\.0\.1|0\.0\.0\.0)(:\d+|\b)(?!.*free_port)")
CREATES = re.compile(r"/api/create|/api/copy|\.create\(|\.copy\(")


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_course_has_its_notebooks():
    names = [p.name for p in LESSONS]
    assert names[:1] == ["00_setup_check.ipynb"] and len(names) == len(set(n[:2] for n in names))


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_title_then_configuration(path):
    first, *rest = cells(path)
    assert first["cell_type"] == "markdown" and source(first).startswith("# ")
    config = next(c for c in rest if c["cell_type"] == "code")
    assert "server_url()" in source(config) and 'os.environ.get("LLM_MODEL", "smollm2:135m")' in source(config)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_a_lesson_says_what_it_teaches_and_ends_with_exercises(path):
    all_cells = cells(path)
    intro = source(all_cells[0]).lower()
    assert "learn" in intro or "check" in intro
    assert "you need" in intro
    assert any(c["cell_type"] == "markdown" and source(c).startswith("## Exercises") for c in all_cells)
    assert (NOTEBOOKS / "solutions" / path.name.replace(".ipynb", "_solutions.ipynb")).exists()


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_no_hard_coded_host_in_code(path):
    for cell in cells(path):
        if cell["cell_type"] == "code":
            for line in source(cell).splitlines():
                assert not HARD_CODED_HOST.search(line.split("#")[0]), f"hard-coded host in: {line}"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: p.name)
def test_committed_with_outputs_in_order(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then save"
    prints = [c for c in code if any(line.startswith("print(") for line in source(c).splitlines())]
    assert all(c["outputs"] for c in prints), "a cell that prints has no output: run it and save"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_a_notebook_that_creates_models_cleans_up(path):
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    if any(CREATES.search(s) for s in code):
        assert re.search(r"delete", code[-1]), "the last cell should delete what the notebook created"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_a_lesson_links_the_real_ollama_note(path):
    markdown = [source(c) for c in cells(path) if c["cell_type"] == "markdown"][:2]
    assert any("(real_ollama.md)" in text for text in markdown), "link real_ollama.md in the first two markdown cells"
    assert (NOTEBOOKS / "real_ollama.md").exists()
