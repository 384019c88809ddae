"""The README's Python examples run as written (the NumPy one, then the torch one)."""
import os
import re

import pytest

from conftest import ROOT


def readme_examples():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_examples(capsys):
    blocks = readme_examples()
    assert len(blocks) == 2
    assert len(blocks[0].strip().splitlines()) <= 11  # the ten-line example (and its import)
    scope = {}
    exec(compile(blocks[0], "README.md (Python)", "exec"), scope)
    assert "ess" in scope["s"] and scope["v"].shape == (8, 4, 2)
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("torch is not installed: the torch example did not run")
    exec(compile(blocks[1], "README.md (torch)", "exec"), scope)
    assert scope["xt"].grad.shape == (8, 4, 2)
    assert scope["field"].params.grad.abs().max() > 0
