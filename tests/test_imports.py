"""The import rules of docs/ARCHITECTURE.md, checked by walking every module's imports with `ast`.

shards    <- labeler <- pipelines        shards <- c2fmae        shards <- quality
c2f (the app) imports any of them
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("shards", "labeler", "pipelines", "c2fmae", "quality", "c2f")
ALLOWED = {
    "shards": set(),
    "labeler": {"shards"},
    "c2fmae": {"shards"},
    "quality": {"shards"},
    "pipelines": {"shards", "labeler"},
    "c2f": {"shards", "labeler", "pipelines", "c2fmae", "quality"},
}


def imported_packages(source: str, module: str) -> set[str]:
    """Other project packages that the module `module` (dotted name) imports, absolute or relative,
    anywhere in the file (imports inside functions count: they are how heavy imports are deferred)."""
    package = module.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package unless it climbs out of it
                parent = module.split(".")[:-1]
                base = parent[: len(parent) - (node.level - 1)]
                names = [".".join([*base, node.module or ""]).strip(".")]
            else:
                names = [node.module or ""]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found - {package}


def test_every_module_imports_only_what_its_package_may():
    violations = []
    for package, allowed in ALLOWED.items():
        files = sorted((REPO / package).rglob("*.py"))
        assert files, package
        for path in files:
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            bad = imported_packages(path.read_text(), module) - allowed
            if bad:
                violations.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}")
    assert not violations, "\n".join(violations)


def test_the_rule_checker_sees_violations():
    source = (
        "import numpy\nfrom . import format\nfrom c2fmae import model\n\ndef f():\n    from ..labeler import base\n"
    )
    assert imported_packages(source, "shards.probe") == {"c2fmae", "labeler"}
    assert imported_packages("from .plan import Item\nfrom shards import pack\n", "pipelines.worker") == {"shards"}
    # the format stands below the tools that read it: shards -> quality is a violation, the reverse is not
    assert imported_packages("def f():\n    from quality.where import select\n", "shards.reader") == {"quality"}
    assert imported_packages("from shards.manifest import read_manifest\n", "quality.output") == {"shards"}


def test_rules_cover_every_package_and_the_tools_stand_on_the_format_alone():
    assert set(ALLOWED) == set(PACKAGES) == {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert ALLOWED["quality"] == {"shards"} and "quality" not in ALLOWED["shards"]
    assert all("quality" not in allowed for package, allowed in ALLOWED.items() if package != "c2f")
