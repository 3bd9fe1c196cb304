"""The documentation site builds offline with warnings as errors, and carries no machine paths.

One Sphinx build per test session (``sphinx-build -W --keep-going``, as CI
runs it) into a temporary folder; then one test per source page, so that a
failure names the page: its build warnings, and machine-specific paths or
references to notes users cannot open anywhere in its built HTML.

Then the pages against the code, read from the Markdown sources (no Sphinx
needed): option tables against the real signatures and defaults, printed
signatures, the command line pages against the real argparse options and
the usage message, links and named files, install extras, the Python
examples' imports, and the README's first screen.
"""
import argparse
import ast
import inspect
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(str(p.relative_to(DOCS).with_suffix("")) for p in DOCS.rglob("*.md") if "_build" not in p.parts)
API = "API reference (docstrings and module sources)"
MACHINE_PATHS = re.compile(r"/work/|shared/papers|\.venv/bin")

# Pages other engineers are rewriting; each mark names what is wrong today.
KNOWN_BROKEN = {}
KNOWN_MACHINE_PATHS = {
}


def _marked(pages, known):
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=f"docs/{p}.md {known[p]}")) if p in known else p
        for p in pages
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("sphinx")  # the site tests only; the checks of the pages against the code always run
    pytest.importorskip("myst_parser")
    out = tmp_path_factory.mktemp("site")
    log = out / "warnings.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-w", str(log),
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    warnings = log.read_text().splitlines() if log.exists() else []
    return proc, out / "html", [w for w in warnings if "WARNING" in w or "ERROR" in w]


def _warnings_of(page, warnings):
    source = str(DOCS / f"{page}.md")
    return [w for w in warnings if w.startswith(source + ":") or w.startswith(source + " ")]


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)

    def handle_starttag(self, tag, attrs):
        self.parts.extend(v for k, v in attrs if k in ("href", "src") and v)


def _html_text(path: Path) -> str:
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    return " ".join(parser.parts)


def test_site_builds_with_warnings_as_errors(site):
    proc, html, warnings = site
    page_warnings = [w for p in PAGES for w in _warnings_of(p, warnings)]
    others = [w for w in warnings if w not in page_warnings]
    assert not others, "\n".join(others)  # docstrings, configuration, toctrees
    assert (html / "index.html").exists() and (html / "api" / "index.html").exists()
    if not page_warnings:
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("page", _marked(PAGES, KNOWN_BROKEN))
def test_page_builds_without_warnings(site, page):
    _, html, warnings = site
    assert not _warnings_of(page, warnings)
    assert (html / f"{page}.html").exists(), f"docs/{page}.md is not in the site"


@pytest.mark.parametrize("page", _marked(PAGES, KNOWN_MACHINE_PATHS))
def test_page_has_no_machine_paths(site, page):
    _, html, _ = site
    text = _html_text(html / f"{page}.html")
    assert not MACHINE_PATHS.findall(text), sorted(set(MACHINE_PATHS.findall(text)))


def test_api_reference_has_no_machine_paths_and_covers_every_public_module(site):
    _, html, _ = site
    pages = sorted((html / "api").rglob("*.html")) + sorted((html / "_modules").rglob("*.html"))
    found = {str(p.relative_to(html)): sorted(set(MACHINE_PATHS.findall(_html_text(p))))for p in pages}
    assert not {k: v for k, v in found.items() if v}
    generated = {p.stem for p in (html / "api" / "generated").glob("*.html")}
    for module in ("captum_global", "captum_global.attr", "captum_global.metrics", "captum_global.world",
                   "captum_global.errors", "captum_global.backdoor", "captum_global.integrations"):
        assert module in generated
    sise = (html / "api" / "generated" / "captum_global.attr.html").read_text(encoding="utf-8")
    assert 'id="captum_global.attr.SISE.attribute"' in sise  # the docstrings, not only the module names


def test_every_page_is_reachable_from_the_landing_page(site):
    _, html, _ = site
    index = (html / "index.html").read_text(encoding="utf-8")
    for page in PAGES:
        if page != "index" and not page.startswith("api/"):
            assert f'href="{page}.html"' in index, page


def test_figures_referenced_by_pages_are_in_the_site(site):
    _, html, _ = site
    for page in PAGES:
        for src in re.findall(r'<img[^>]+src="([^"]+)"', (html / f"{page}.html").read_text(encoding="utf-8")):
            if not src.startswith(("http:", "https:", "data:")):
                assert (html / f"{page}.html").parent.joinpath(src).resolve().exists(), (page, src)


# ---------------------------------------------------------------------------
# The pages against the code: option tables, signatures, commands, links.
# These read the Markdown sources and import the package; no Sphinx needed.
# ---------------------------------------------------------------------------
USE = DOCS / "use"
_ROW = re.compile(r"^\|(.+)\|\s*$")


def _table_after(page: Path, header: str):
    """The rows (lists of cells) of the first table whose header row starts with ``header``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "").startswith(header.replace(" ", "")))
    rows = []
    for line in lines[start + 2:]:
        match = _ROW.match(line)
        if not match:
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", match.group(1))])
    assert rows, (page, header)
    return rows


def _names(cell: str):
    return re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)`", cell)


def _literal(text: str):
    text = text.replace("`", "").strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # compared as text: must be listed in the spec's meanings


def _public_api():
    from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency
    from captum_global.backdoor import scan as backdoor_scan
    from captum_global.explain import explain_dataset
    from captum_global.robustness import manipulate_model
    return {
        "SISE.attribute": SISE.attribute,
        "RISE.attribute": RISE.attribute,
        "InputAgnosticSaliency.attribute": InputAgnosticSaliency.attribute,
        "ClassWiseSynthesis.attribute": ClassWiseSynthesis.attribute,
        "manipulate_model": manipulate_model,
        "explain_dataset": explain_dataset,
        "scan_for_backdoor options": backdoor_scan.DEFAULTS,
    }


# (page, table header, documented function, column of the default or None,
#  parameters documented elsewhere on the page, defaults documented in words: {name: text})
OPTION_TABLES = [
    ("sise.md", "| option | default | what it does |", "SISE.attribute", 1, set(),
     {"baselines": "0"}),
    ("sise.md", "| option | default | meaning |", "RISE.attribute", 1,
     {"inputs", "target", "additional_forward_args"}, {}),
    ("input_agnostic.md", "| parameter | default | meaning |", "InputAgnosticSaliency.attribute", 1,
     {"inputs"}, {"target": "required"}),
    ("classwise.md", "| argument | default | meaning |", "ClassWiseSynthesis.attribute", 1, set(), {}),
    ("robustness.md", "| argument | default | meaning |", "manipulate_model", 1, set(),
     {"region": "border frame", "fooling_data": "`data`", "eval_data": "`data`"}),
    ("explain.md", "| argument | what |", "explain_dataset", None, set(), {}),
    ("backdoor.md", "| option | default | meaning |", "scan_for_backdoor options", 1, set(), {}),
]


def _parameters(documented):
    if isinstance(documented, dict):
        return dict(documented)
    return {name: p.default for name, p in inspect.signature(documented).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


@pytest.mark.parametrize("page,header,function,column,elsewhere,in_words", OPTION_TABLES,
                         ids=[f"{t[0]}:{t[2]}" for t in OPTION_TABLES])
def test_option_table_matches_the_signature(page, header, function, column, elsewhere, in_words):
    """Every row names real parameters with their real defaults, and every parameter has a row."""
    parameters = _parameters(_public_api()[function])
    documented = set()
    for row in _table_after(USE / page, header):
        names = _names(row[0])
        assert names, (page, row)
        unknown = [n for n in names if n not in parameters]
        assert not unknown, f"docs/use/{page}: {unknown} are not parameters of {function}"
        documented.update(names)
        if column is None or not row[column]:
            continue
        if len(names) == 1 and names[0] in in_words:
            assert row[column] == in_words[names[0]], (page, names[0], row[column])
            continue
        value = _literal(row[column])
        values = list(value) if len(names) > 1 else [value]
        assert len(values) == len(names), (page, names, row[column])
        for name, shown in zip(names, values):
            real = parameters[name]
            assert real is not inspect.Parameter.empty, f"docs/use/{page}: {name} has no default"
            assert shown == real and type(shown) in (type(real), int, float) or (shown is None and real is None), \
                f"docs/use/{page}: {function}({name}=...) defaults to {real!r}, the page says {row[column]}"
    missing = set(parameters) - documented - elsewhere
    assert not missing, f"docs/use/{page} does not document {sorted(missing)} of {function}"


def _signature_text(function) -> str:
    parts = []
    for name, p in inspect.signature(function).parameters.items():
        if name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not any(x.startswith("*") for x in parts):
            parts.append("*")
        text = name if p.default is p.empty else f"{name}={p.default!r}"
        parts.append(("**" if p.kind is p.VAR_KEYWORD else "") + text)
    return ", ".join(parts).replace("'", '"')


def _documented_call(page: str, prefix: str) -> str:
    text = " ".join((USE / page).read_text(encoding="utf-8").split())
    match = re.search(r"`" + re.escape(prefix) + r"\(([^`]*)\)`", text)
    assert match, (page, prefix)
    return match.group(1)


def test_printed_signatures_match_the_code():
    from captum_global.attr import SISE
    from captum_global.backdoor import neural_cleanse, scan_for_backdoor
    from captum_global.metrics import flag_anomalies, mad_anomaly_index
    assert _documented_call("sise.md", "SISE") == _signature_text(SISE.__init__)
    assert _documented_call("sise.md", "attribute") == _signature_text(SISE.attribute)
    assert _documented_call("backdoor.md", "scan_for_backdoor") == _signature_text(scan_for_backdoor)
    assert _documented_call("backdoor.md", "neural_cleanse") == _signature_text(neural_cleanse)
    assert _documented_call("metrics.md", "mad_anomaly_index") == _signature_text(mad_anomaly_index)
    assert _documented_call("metrics.md", "flag_anomalies") == _signature_text(flag_anomalies)


def test_neural_cleanse_defaults_match_the_page():
    from captum_global.backdoor import cleanse
    text = " ".join((USE / "backdoor.md").read_text(encoding="utf-8").split())
    line = text[text.index("`neural_cleanse` options:"):text.index("Both refuse")]
    shown = {name: ast.literal_eval(value) for name, value in re.findall(r"`(\w+)` \(((?:[^()]|\([^()]*\))+)\)", line)}
    assert shown == cleanse.DEFAULTS


def test_metric_signatures_in_the_tables_use_the_real_parameter_names():
    import captum_global.metrics as metrics
    text = (USE / "metrics.md").read_text(encoding="utf-8")
    calls = re.findall(r"`(\w+)\(([^`)]*)\)`", text)
    checked = 0
    for name, args in calls:
        function = getattr(metrics, name, None)
        if function is None or not callable(function) or args.strip() in ("", "..."):
            continue
        parameters = inspect.signature(function).parameters
        for arg in args.split(","):
            arg = arg.strip().split("=")[0].strip()
            if arg and arg != "...":
                assert arg in parameters, f"docs/use/metrics.md: {name}() has no parameter {arg!r}"
        checked += 1
    assert checked >= 8


def _cli_options(command: str):
    from captum_global.cli import build_parser
    parser = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for action in parser._actions for s in action.option_strings if s.startswith("--") and s != "--help"}


@pytest.mark.parametrize("command", ["demo", "scan", "layers", "explain"])
def test_cli_page_documents_exactly_the_real_options(command):
    text = (USE / "cli.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n## {command}\n"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    shown = set(re.findall(r"(--[a-z][a-z-]+)(?![\w-])", section)) - {"--help"}
    real = _cli_options(command)
    assert not shown - real, f"docs/use/cli.md ## {command} names options that do not exist: {sorted(shown - real)}"
    # options shared by scan and explain are described once, under scan (\"model options: as for scan\")
    shared = _cli_options("scan") & real if command == "explain" else set()
    assert not real - shown - shared, f"docs/use/cli.md ## {command} does not mention {sorted(real - shown - shared)}"


def test_cli_usage_example_is_what_the_command_prints():
    text = (USE / "cli.md").read_text(encoding="utf-8")
    block = text[text.index("$ captum-global layers resnet18 --size 100000"):]
    expected = block.split("\n```")[0].splitlines()[1:]
    proc = subprocess.run([sys.executable, "-m", "captum_global", "layers", "resnet18", "--size", "100000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    printed = [line for line in proc.stderr.splitlines() if line]
    assert printed == expected


_PAGES_WITH_README = [ROOT / "README.md", DOCS / "contributing.md"] + [
    p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts]


@pytest.mark.parametrize("page", _PAGES_WITH_README, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_named_repository_files_exist(page):
    text = page.read_text(encoding="utf-8")
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if link.startswith(("http:", "https:", "mailto:", "#")):
            continue
        assert (page.parent / link.partition("#")[0]).exists(), f"{page.name}: broken link {link}"
    for path in re.findall(r"`((?:docs|benchmarks|tests)/[\w./-]+\.(?:md|py|png))`", text):
        assert (ROOT / path).exists(), f"{page.name}: names {path}, which is not in the repository"
    for module in re.findall(r"python -m (benchmarks\.\w+)", text):
        name = module.split(".", 1)[1]
        assert (ROOT / "benchmarks" / f"{name}.py").exists() or (ROOT / "benchmarks" / name).is_dir(), module


_NOTES = re.compile(r"/tmp/|/work/|previous engineer|this session|yesterday|we tried|TODO|FIXME", re.IGNORECASE)


@pytest.mark.parametrize("page", _PAGES_WITH_README, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_hold_no_scratch_paths_or_working_notes(page):
    assert not _NOTES.findall(page.read_text(encoding="utf-8")), sorted(set(_NOTES.findall(page.read_text())))


def _python_blocks(page: Path):
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("page", [ROOT / "README.md", DOCS / "index.md"] + sorted(USE.glob("*.md")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_parse_and_import_real_names(page):
    import importlib
    for block in _python_blocks(page):
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("captum_global"):
                try:
                    module = importlib.import_module(node.module)
                except ModuleNotFoundError as error:  # an adapter whose optional tool is not installed
                    if error.name.startswith("captum_global"):
                        raise
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name):  # a submodule: from captum_global import viz
                        importlib.import_module(f"{node.module}.{alias.name}")


def test_readme_first_screen_keeps_exactly_two_commands():
    head = (ROOT / "README.md").read_text(encoding="utf-8").split("\n---\n")[0]
    commands = [line.strip() for line in head.splitlines() if line.startswith("    ")]
    assert len(commands) == 2, commands
    assert commands[0].endswith("captum-global demo --out demo-out")
    assert commands[1].endswith("python -m pytest -q")
    assert all("pip install -q -e '.[all]'" in c for c in commands)


def test_install_extras_named_in_the_pages_exist():
    import configparser
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg")
    extras = set(config["options.extras_require"])
    named = set()
    for page in _PAGES_WITH_README:
        text = page.read_text(encoding="utf-8")
        named.update(re.findall(r"(?:captum_global|\.)\[(\w+)\]", text))
        named.update(re.findall(r"`(\w+)` extra\b", text))
    assert named and named <= extras, sorted(named - extras)


def test_every_command_printed_in_the_pages_uses_real_options():
    real = {command: _cli_options(command) for command in ("demo", "scan", "layers", "explain")}
    checked = 0
    for page in _PAGES_WITH_README:
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        for command, rest in re.findall(r"(?:captum-global|-m captum_global) (demo|scan|layers|explain)([^`\n]*)", text):
            options = set(re.findall(r"(--[a-z][a-z-]+)(?![\w-])", rest)) - {"--help"}
            assert options <= real[command], f"{page.name}: captum-global {command} has no {sorted(options - real[command])}"
            checked += 1
    assert checked >= 10
