"""Sphinx configuration of the captum_global documentation site.

Build it (offline, warnings are errors) from a checkout with the ``docs``
extra installed::

    pip install -e '.[docs]'
    sphinx-build -W -b html docs docs/_build/html

The API reference is generated at build time from the docstrings of every
public module (no path component starting with ``_``), so a new public
module gets its page without an edit here.
"""
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import captum_global  # noqa: E402  (after the path, so a checkout documents itself)

project = "captum_global"
author = "captum_global contributors"
release = version = captum_global.__version__
copyright = "captum_global contributors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown pages: GitHub-style heading anchors, so "page.md#section" links work.
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# Docstrings follow Captum's Google style (Args:, Returns:, Examples::).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of the same attribute
autodoc_member_order = "bysource"
# Types go in the parameter list of the description, so signatures stay readable.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# A method without its own docstring (e.g. get_name) is not shown with Captum's text.
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}

html_theme = "furo"
html_title = f"captum_global {release}"
html_static_path = []
html_show_sourcelink = False
html_copy_source = False


# ---------------------------------------------------------------- the API pages


def public_modules():
    """Every importable public module of the package, the package itself first."""
    names = ["captum_global"]
    for info in pkgutil.walk_packages(captum_global.__path__, "captum_global."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def api_homes(modules):
    """Each public object documented once: in the shallowest public module (below the package) exporting it."""
    homes = {}
    for name in sorted(modules, key=lambda n: (n.count("."), n)):
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", []):
            obj = getattr(module, member)
            if id(obj) in homes or (name == "captum_global" and member != "__version__"):
                continue
            homes[id(obj)] = (name, member, obj)
    return list(homes.values())


def _directive(obj):
    if inspect.isclass(obj):
        return "autoclass", "   :members:\n"
    if callable(obj):
        return "autofunction", ""
    return "autodata", "   :annotation:\n"


def write_api_pages(out: Path) -> None:
    modules = public_modules()
    homes = api_homes(modules)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set()
    for name in modules:
        lines = [name, "=" * len(name), "", f".. automodule:: {name}", ""]
        for home, member, obj in homes:
            if home == name and member != "__version__":
                directive, options = _directive(obj)
                lines += [f".. {directive}:: {name}.{member}", options]
        page = out / f"{name}.rst"
        wanted.add(page.name)
        text = "\n".join(lines)
        if not page.exists() or page.read_text() != text:  # unchanged pages keep incremental builds fast
            page.write_text(text)
    for stale in out.glob("captum_global*.rst"):
        if stale.name not in wanted:
            stale.unlink()


write_api_pages(DOCS / "api" / "generated")
