"""The pages' Python examples run, as a user would run them.

Every ```python block of README.md, docs/*.md, docs/use/*.md (and the one
runnable snippet of docs/measurements/benchmark.md) is executed the way a
user copies it into a fresh Python session: the blocks of one page in page
order, in one namespace (later blocks reuse earlier names), in an empty
working folder (examples write files there). A block that raises fails the
test of its page; where a page states a shape or a value, the test checks it
too.

Two runs per page:

- the default (fast) run executes every block that takes a few seconds on one
  CPU thread. A slow block may take part only in a *fast variant*: the same
  code with a smaller value for an option that the page itself shows and
  documents (``n_steps`` of input-agnostic saliency, ``n_masks`` of RISE, the
  step counts of the backdoor scans, ...); each such substitution must match
  the page's text, so an edited example fails here instead of silently
  running something else.
- the ``slow`` run (``python -m pytest -m slow tests/test_docs_examples.py``)
  executes every block verbatim, including the training and zoo examples, and
  the ``torchrun`` examples under ``torchrun --nproc_per_node 2`` as their
  first line says.

Slow only (no fast variant: the cost is in the example's data or in what it
calls, not in an option the page shows): README.md and docs/index.md (SISE,
NoiseTunnel, input-agnostic saliency and class-wise synthesis at their
defaults, tens of seconds), every block of docs/use/classwise.md (the class
gradients of 500 images at every checkpoint, whatever the number of
iterations, then minutes of synthesis), and the two ``torchrun`` scripts
(docs/use/explain.md, docs/use/classwise.md), which call
``dist.init_process_group`` and cannot run in a plain Python session.

Not executable: none. No ```python block needs a file a user brings; the
examples that read a user's own model or image folder are ``bash`` /
``console`` commands (docs/use/cli.md, docs/use/explain.md), which
tests/test_cli.py and tests/test_docs.py cover.

Every page's count of ```python blocks is pinned below, so a new example has
to be classified here before the suite passes.
"""
import ast
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
OPEN = re.compile(r"^([ \t]*)(`{3,}|~{3,})[ \t]*([^\s`{]*)")

FAST, SLOW, TORCHRUN = "fast", "slow", "torchrun"


def python_blocks(page: Path):
    """The ```python blocks of a Markdown page, in order: (first line number, dedented code)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = OPEN.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and not lines[j].strip().strip(fence[0])):
            j += 1
        if lang == "python":
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:j]]
            blocks.append((i + 1, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def variant(*substitutions):
    """A fast variant: (page text, replacement) pairs, each text found in the block."""
    return ("variant", substitutions)


# Per page, one entry per ```python block in page order: FAST (runs verbatim in
# the default run), SLOW (verbatim in the slow run only), TORCHRUN (a script
# started with torchrun, slow run only) or variant(...) (verbatim in the slow
# run, with documented options made smaller in the default run).
PAGES = {
    "README.md": [SLOW],  # SISE, NoiseTunnel, input-agnostic saliency and class-wise synthesis
    "docs/index.md": [SLOW],  # the README's first three methods
    "docs/measurements/benchmark.md": [FAST],
    "docs/use/explain.md": [FAST, FAST, FAST, TORCHRUN],
    "docs/use/input_agnostic.md": [variant(("seed=0", "seed=0, n_steps=4"))],
    "docs/use/backdoor.md": [variant(("clean_inputs=clean, seed=0", "clean_inputs=clean, seed=0, n_steps=10"),
                                     ("neural_cleanse(model, clean, seed=0",
                                      "neural_cleanse(model, clean, seed=0, n_epochs=1"))],
    "docs/use/metrics.md": [FAST, FAST],
    "docs/use/sise.md": [variant(("target=[3, 7])", "target=[3, 7], max_maps_per_layer=2)"),
                                 ("return_layer_maps=True)", "return_layer_maps=True, max_maps_per_layer=2)")),
                         variant(("n_masks=500", "n_masks=16"))],
    "docs/use/robustness.md": [variant(("steps=300", "steps=2"))],
    "docs/use/integrations.md": [FAST, FAST],
    "docs/use/world.md": [FAST],
    # class-wise synthesis reads the class gradients of 500 images at every checkpoint, whatever the
    # number of iterations
    "docs/use/classwise.md": [SLOW, SLOW, SLOW, TORCHRUN],
}


def _checks(page, index, ns, verbatim):
    """What the page states about the results of its block ``index``, where it states something checkable."""
    if (page, index) in (("README.md", 0), ("docs/index.md", 0)):
        for name in ("attr", "smooth"):  # input-shaped, in [0, 1]
            assert ns[name].shape == ns["data"].images.shape
        assert 0 <= float(ns["attr"].min()) and float(ns["attr"].max()) <= 1
        assert tuple(ns["class_maps"].shape) == (5, 3, 64, 64)
    elif (page, index) == ("docs/use/explain.md", 0):
        assert tuple(ns["result"].maps().shape) == (20, 3, 64, 64) and ns["result"].num_shards == 3
    elif (page, index) == ("docs/use/explain.md", 1):
        assert Path("explain_shards.png").stat().st_size > 0
    elif (page, index) == ("docs/use/explain.md", 2):
        assert tuple(ns["shard"]["attributions"].shape) == (8, 3, 64, 64)
        assert sorted(os.listdir("sise-maps")) == ["index.json"] + [f"shard-0000{k}.safetensors" for k in range(3)]
    elif (page, index) == ("docs/use/explain.md", 3):
        assert json.loads(Path("ig-maps/index.json").read_text())["complete"]
    elif (page, index) == ("docs/use/input_agnostic.md", 0):
        assert tuple(ns["maps"].shape) == (5, 3, 64, 64)
        assert 0 <= float(ns["maps"].min()) and float(ns["maps"].max()) <= 1
    elif (page, index) == ("docs/use/backdoor.md", 0):
        assert Path("scan.png").stat().st_size > 0
        if verbatim:
            assert ns["scan"].flagged == [0]
    elif (page, index) == ("docs/use/metrics.md", 0):
        assert tuple(ns["cam"].shape) == (2, 1, 8, 8)
        assert tuple(ns["auc"].shape) == (2,) and tuple(ns["curve"].shape) == (2, 17)
    elif (page, index) == ("docs/use/sise.md", 0):
        assert tuple(ns["attr"].shape) == (2, 3, 224, 224)
        assert {tuple(m.shape) for m in ns["maps"].values()} == {(2, 1, 224, 224)}
        assert ns["sise"].selected_layers(ns["x"]) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    elif (page, index) == ("docs/use/sise.md", 1):
        assert tuple(ns["attr"].shape) == (2, 3, 224, 224)
    elif (page, index) == ("docs/use/integrations.md", 1):
        assert ns["cams"].shape == (2, 64, 64) and str(ns["cams"].dtype) == "float32"
        assert 0 <= ns["cams"].min() and ns["cams"].max() <= 1
    elif (page, index) == ("docs/use/world.md", 0):
        assert tuple(ns["data"].images.shape) == (100, 3, 64, 64)
        assert ns["entry"].record()["trajectory"]["epochs"] == [0, 3, 5, 8]
        assert len(ns["trajectory"]) == 4 and len(ns["train"]) == 4000
        assert tuple(ns["region"].shape) == (64, 64) and ns["region"].dtype == torch.bool
    elif (page, index) == ("docs/use/classwise.md", 0):
        result = ns["result"]
        assert tuple(result.images.shape) == (5, 4, 3, 64, 64) and tuple(result.confidence.shape) == (5, 4)
        assert tuple(result.distances.shape) == (len(result.trajectory), 5) and result.note == ""
        assert Path("classwise.png").stat().st_size > 0


def _code(kind, code):
    if isinstance(kind, tuple):  # a fast variant
        for old, new in kind[1]:
            assert old in code, f"the example no longer contains {old!r}: update PAGES in tests/test_docs_examples.py"
            code = code.replace(old, new)
    return code


def _run(page, blocks, kinds, slow):
    namespace = {"__name__": "__main__"}
    for index, ((line, code), kind) in enumerate(zip(blocks, kinds)):
        if kind == TORCHRUN:
            if slow:
                _torchrun(page, line, code)
                _checks(page, index, namespace, slow)
            continue
        if kind == SLOW and not slow:
            continue
        source = code if slow else _code(kind, code)
        try:
            exec(compile(ast.parse(source), f"{page}:{line}", "exec"), namespace)
        except Exception as error:  # name the block in the failure
            raise AssertionError(f"the example of {page} at line {line} raised {error!r}") from error
        _checks(page, index, namespace, slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(page, line, code):
    script = Path(f"example_{line}.py")
    script.write_text(code)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script)], env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, f"{page} line {line} under torchrun:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_every_python_block_is_classified():
    pages = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    pages += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "use").glob("*.md"))
    pages += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "measurements").glob("*.md"))
    found = {page: len(python_blocks(ROOT / page)) for page in pages}
    assert {page: n for page, n in found.items() if n} == {page: len(kinds) for page, kinds in PAGES.items()}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    yield tmp_path
    torch.random.set_rng_state(state)
    torch.set_num_threads(threads)
    if "matplotlib.pyplot" in sys.modules:  # the examples' figures
        sys.modules["matplotlib.pyplot"].close("all")


def _pages(predicate):
    return [page for page, kinds in PAGES.items() if predicate(kinds)]


@pytest.mark.parametrize("page", _pages(lambda kinds: any(k != SLOW and k != TORCHRUN for k in kinds)))
def test_page_examples_run(page, in_tmp):
    kinds = PAGES[page]
    _run(page, python_blocks(ROOT / page), kinds, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages(lambda kinds: any(k != FAST for k in kinds)))
def test_page_examples_run_verbatim(page, in_tmp):
    _run(page, python_blocks(ROOT / page), PAGES[page], slow=True)
