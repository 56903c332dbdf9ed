"""The README's example files are included verbatim: each `<!-- include: PATH -->` is followed by a
code block holding exactly PATH's content, so the README cannot drift from the files the
integration tests run (tests/integration/test_clients.py, test_bring_your_own_model.py)."""

from __future__ import annotations

import re

from tests.conftest import ROOT

INCLUDE = re.compile(r"<!-- include: (\S+) -->\n```\w*\n(.*?)```\n", re.DOTALL)


def test_every_included_file_is_shown_exactly() -> None:
    readme = (ROOT / "README.md").read_text()
    included = INCLUDE.findall(readme)
    assert len(included) == readme.count("<!-- include: "), "an include marker without a code block right after it"
    for path, shown in included:
        assert shown == (ROOT / path).read_text(), f"README's copy of {path} differs from the file"


def test_every_client_example_is_in_the_readme() -> None:
    included = {path for path, _ in INCLUDE.findall((ROOT / "README.md").read_text())}
    examples = {str(path.relative_to(ROOT)) for path in (ROOT / "examples" / "clients").iterdir()}
    assert examples == included
