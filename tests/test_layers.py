"""The layering, as a test: every import points down the tree (DEVELOPERS.md "Layers").

An AST walk over maple/, jobs/ and serve/ that counts every import, function-local ones included (each is a
dependency). It fails on an import cycle between modules or packages, on an import from a lower layer to a higher
one, on Ray in the layers that must not know it, and on a job importing another job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A package may import its own modules and any package of a lower layer; packages on one line may
# import each other only without a cycle.
LAYERS = [
    {"section", "data", "losses", "mining", "eval", "retrieval"},  # plain math and I/O
    {"judge", "rewrite"},  # the judge's prompt and backends; the rewriter (the generative reranker asks the judge)
    {"models"},  # embedders and rerankers, one family table
    {"train"},  # the loop, the steps, GradCache
    {"recipes"},  # one file per training flow
    {"stages"},  # the Ray Data pipelines
    {"tracking", "serving"},  # MLflow runs and registry; the logic behind the HTTP API
    {"config"},  # the whole Config, composed of every package's section
    {"console"},  # what a job shows on the terminal; everything the libraries write to its log
    {"runtime"},  # what every entrypoint shares: the command line, joining Ray
]
APPS = {"jobs", "serve"}  # entrypoints: above every library layer
RAY_ALLOWED = {"train", "stages", "runtime"}  # where work is distributed (the Serve deployments live in serve/)


def layer_of(package: str) -> int:
    for i, packages in enumerate(LAYERS):
        if package in packages:
            return i
    raise AssertionError(f"maple.{package} is in no layer: add it to LAYERS in {Path(__file__).name} and to "
                         "DEVELOPERS.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> set[str]:
    """Every module `module` (the file at `path`) imports, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).rstrip(".")
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from maple.x import module`
    return found


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    files = [p for d in ("maple", "jobs", "serve") for p in (ROOT / d).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    out = {}
    for name, path in modules.items():
        deps = imports(path, name)
        out[name] = {d for d in deps if (d in modules and d != name) or d.split(".")[0] == "ray"}
    return out


def top(module: str) -> str:
    """The unit of layering: `maple.<package>` -> package; jobs / serve."""
    parts = module.split(".")
    return parts[1] if parts[0] == "maple" and len(parts) > 1 else parts[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def upward_imports(modules: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, deps in modules.items():
        if not module.startswith("maple.") or module == "maple":
            continue
        for dep in deps:
            if dep.startswith("ray"):
                continue
            if top(dep) in APPS:
                upward.append(f"{module} -> {dep} (the library imports an entrypoint)")
            elif dep != "maple" and layer_of(top(dep)) > layer_of(top(module)):
                upward.append(f"{module} -> {dep}")
    return upward


def ray_outside_its_layers(modules: dict[str, set[str]]) -> list[str]:
    return sorted(m for m, deps in modules.items()
                  if m.startswith("maple.") and top(m) not in RAY_ALLOWED and any(d.startswith("ray") for d in deps))


def job_crossings(modules: dict[str, set[str]]) -> list[str]:
    """A job importing another job, or serve/ importing a job (jobs.common, the jobs' shared helper, is allowed to
    jobs only)."""
    out = []
    for module, deps in modules.items():
        for dep in deps:
            if dep.startswith("jobs.") and dep != module and (module.startswith("serve") or
                                                               (module.startswith("jobs.") and dep != "jobs.common")):
                out.append(f"{module} -> {dep}")
    return out


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, deps in modules.items():
        for dep in deps:
            if not dep.startswith("ray") and top(dep) != top(module):
                packages.setdefault(top(module), set()).add(top(dep))
    return packages


@pytest.fixture(scope="module")
def modules() -> dict[str, set[str]]:
    return graph()


def test_no_module_imports_a_module_that_imports_it_back(modules):
    assert cycles({m: {d for d in deps if not d.startswith("ray")} for m, deps in modules.items()}) == []


def test_no_package_cycle(modules):
    assert cycles(package_graph(modules)) == []


def test_every_library_import_points_to_a_lower_or_the_same_layer(modules):
    assert upward_imports(modules) == []


def test_ray_is_imported_only_where_work_is_distributed(modules):
    assert ray_outside_its_layers(modules) == []


def test_jobs_import_no_other_job_and_serve_imports_no_job(modules):
    assert job_crossings(modules) == []


def test_the_checks_catch_each_kind_of_break(tmp_path):
    """Each check on a small graph with one break of its kind (a check that cannot fail proves nothing); the walk
    sees function-local imports and `from package import module`."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from maple.stages import mining\n    import ray.data\n")
    assert {"maple.stages", "maple.stages.mining", "ray.data"} <= imports(source, "maple.models.probe")
    assert upward_imports({"maple.models.probe": {"maple.stages.mining"}}) == ["maple.models.probe -> "
                                                                               "maple.stages.mining"]
    assert upward_imports({"maple.data.x": {"jobs.common"}})
    assert ray_outside_its_layers({"maple.losses.x": {"ray.data"}, "maple.stages.y": {"ray"}}) == ["maple.losses.x"]
    assert job_crossings({"jobs.demo": {"jobs.mine", "jobs.common"}, "serve.app": {"jobs.common"}}) == [
        "jobs.demo -> jobs.mine", "serve.app -> jobs.common"]
    assert cycles(package_graph({"maple.models.a": {"maple.judge.b"}, "maple.judge.b": {"maple.models.c"}})) == [
        ["judge", "models"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
