"""Builder of the bootstrap scope's Python packages (run as `python3 -IS pybuild.py MODE`).

install: install one pinned wheel into $out.
build:   build a wheel from source with its PEP 517 backend into $dist, install it into $out, then prove
         it: every module in pythonImportsCheck imports from the store alone, and every Requires-Dist
         of the wheel is among the package's dependencies. Failures name the module, the package that
         lacks it and the expression to fix.

Installed executables are small Python scripts that put the package's closure on sys.path, so they
run with an empty environment and import nothing from outside the store.
"""

import configparser
import json
import os
import shutil
import site
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ENV = os.environ
OUT = Path(ENV["out"])
SITE = OUT / ENV["sitePackages"]
PYTHON = ENV["python"]


def fail(message: str) -> "NoReturn":  # noqa: F821 - typing is not imported in a builder
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def path_list(value: str) -> list[str]:
    return [p for p in value.split(":") if p]


def install_wheel(wheel: Path, closure: list[str]) -> None:
    """Unpack a wheel (the installation scheme of PEP 427) and write wrappers for its entry points."""
    SITE.mkdir(parents=True, exist_ok=True)
    bindir = OUT / "bin"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names
                         if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        data_dir = dist_info[: -len(".dist-info")] + ".data"
        for info in zf.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            if name.startswith(data_dir + "/"):
                _, scheme, rest = name.split("/", 2)
                target = {"purelib": SITE, "platlib": SITE, "scripts": bindir,
                          "headers": OUT / "include", "data": OUT}.get(scheme, OUT) / rest
            else:
                target = SITE / name
            if not target.resolve().is_relative_to(OUT.resolve()):
                fail(f"{wheel.name}: entry {name!r} escapes the output")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 or target.parent == bindir:
                target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            if target.parent == bindir:
                body = target.read_bytes()
                if body.startswith(b"#!python"):
                    target.write_bytes(b"#!" + PYTHON.encode() + b" -BIS" + body[len(b"#!python"):])
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode() \
            if f"{dist_info}/entry_points.txt" in names else ""
    write_wrappers(entry_points, [str(SITE)] + closure)
    compile_bytecode()
    support = OUT / "nix-support"
    support.mkdir(exist_ok=True)
    (support / "propagated-build-inputs").write_text(ENV["propagatedBuildInputs"] + "\n")


def compile_bytecode() -> None:
    """Byte-compile the installed modules now, as nixpkgs does: at run time the store is read-only
    (or must be treated so). Hash-based .pyc files stay valid after Nix resets every mtime to 1."""
    import compileall
    import py_compile

    if SITE.is_dir() and not compileall.compile_dir(
            SITE, quiet=2, workers=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH):
        print(f"warning: some modules under {SITE} did not byte-compile (they will run uncompiled)",
              file=sys.stderr)


def write_wrappers(entry_points: str, path: list[str]) -> None:
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # script names are case-sensitive
    parser.read_string(entry_points)
    for section in ("console_scripts", "gui_scripts"):
        if not parser.has_section(section):
            continue
        for script, target in parser.items(section):
            module, _, attr = target.split("[")[0].strip().partition(":")
            wrapper = OUT / "bin" / script
            wrapper.parent.mkdir(parents=True, exist_ok=True)
            # -B: never write __pycache__ into the store (-I would ignore PYTHONDONTWRITEBYTECODE).
            # -I -S: no PYTHONPATH, user site or host site-packages. PYTHONPATH is set for children
            # (e.g. `python -m dagster api grpc`), which are started as sys.executable without -S.
            wrapper.write_text(
                f"#!{PYTHON} -BIS\n"
                "import os, site, sys\n"
                f"_path = {path!r}\n"
                "for _dir in _path:\n"
                "    site.addsitedir(_dir)\n"
                "os.environ['PYTHONPATH'] = os.pathsep.join(_path)\n"
                "os.environ['PYTHONNOUSERSITE'] = '1'\n"
                "os.environ['PYTHONDONTWRITEBYTECODE'] = '1'\n"
                f"from {module} import {attr.split('.')[0]}\n"
                f"sys.exit({attr}())\n"
            )
            wrapper.chmod(0o755)


def unpack_source(src: Path, workdir: Path) -> Path:
    if src.is_dir():
        tree = workdir / "source"
        shutil.copytree(src, tree, symlinks=True)
        for path in [tree, *tree.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        return tree
    with tarfile.open(src) as archive:
        for member in archive.getmembers():
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                fail(f"{src.name}: unsafe path {member.name!r} in archive")
        archive.extractall(workdir / "source")
    entries = list((workdir / "source").iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else workdir / "source"


def build_wheel(tree: Path, dist: Path) -> Path:
    """PEP 517 build_wheel, in-process, with the build-system packages on sys.path."""
    import tomllib

    pyproject = tree / "pyproject.toml"
    system = tomllib.loads(pyproject.read_text()).get("build-system", {}) if pyproject.exists() else {}
    backend_name = system.get("build-backend", "setuptools.build_meta:__legacy__")
    for path in reversed(system.get("backend-path", [])):
        sys.path.insert(0, str(tree / path))
    module_name, _, obj = backend_name.partition(":")
    os.chdir(tree)
    try:
        backend = __import__(module_name, fromlist=["_"])
    except ImportError as exc:
        fail(f"{ENV['pname']}: build backend {backend_name!r} is not importable ({exc}); "
             f"add it to build-system in {ENV['expression']}")
    for part in filter(None, obj.split(".")):
        backend = getattr(backend, part)
    dist.mkdir(parents=True, exist_ok=True)
    return dist / backend.build_wheel(str(dist))


def import_check(modules: list[str], path: list[str]) -> None:
    if not modules:
        return
    index = json.loads(ENV["moduleIndex"])
    providers = {m: pkg for pkg, mods in index.items() for m in mods}
    code = ("import importlib, site, sys\n"
            f"for d in {path!r}: site.addsitedir(d)\n"
            f"for m in {modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except ModuleNotFoundError as e:\n"
            "        print(m, e.name, sep='\\t'); sys.exit(3)\n"
            "    mod = sys.modules[m]\n"
            "    assert (mod.__file__ or '').startswith('/nix/store/'), (m, mod.__file__)\n")
    env = {"PATH": ENV["PATH"], "HOME": ENV.get("TMPDIR", "/tmp")}
    result = subprocess.run([PYTHON, "-BIS", "-c", code], capture_output=True, text=True, env=env, check=False)
    if result.returncode == 3:
        checked, missing = result.stdout.strip().split("\t")
        provider = providers.get(missing.split(".")[0])
        hint = (f"It is provided by python3Packages.{provider}; add that to `dependencies` in {ENV['expression']}."
                if provider else
                f"No pinned wheel provides it; add the package that does to {ENV['expression']}.")
        fail(f"{ENV['pname']}: import check failed: `import {checked}` needs module "
             f"'{missing}', which is not in its dependencies. {hint}")
    if result.returncode != 0:
        fail(f"{ENV['pname']}: import check failed:\n{result.stderr[-3000:]}")
    print(f"{ENV['pname']}: imports {', '.join(modules)} from the Nix store: ok")


def requirements_check(wheel: Path, path: list[str]) -> None:
    """Second half of the import check: every Requires-Dist of the wheel (markers evaluated, extras
    off) is among the dependencies, even when importing the top-level module does not reach it."""
    from email.parser import Parser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        metadata = Parser().parsestr(zf.read(meta_name).decode())
    installed = {}
    for directory in path:
        for meta in Path(directory).glob("*.dist-info/METADATA"):
            headers = Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
            installed[canonicalize_name(headers["Name"])] = headers["Version"]
    relaxed = {canonicalize_name(n) for n in json.loads(ENV["relaxDeps"])}
    modules = json.loads(ENV["moduleIndex"])
    problems = []
    for spec in metadata.get_all("Requires-Dist") or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name not in installed:
            provides = ", ".join(f"'{m}'" for m in modules.get(name, [])) or "its modules"
            problems.append(f"it requires '{spec}', so module {provides} must be importable, but "
                            f"python3Packages.{name} is not among its dependencies: add it to `dependencies`")
        elif name not in relaxed and req.specifier and not req.specifier.contains(installed[name], prereleases=True):
            problems.append(f"it requires '{spec}', but the dependencies provide {name} {installed[name]}")
    if problems:
        fail(f"{ENV['pname']}: import check failed ({ENV['expression']}):\n  " + "\n  ".join(problems))


def main() -> None:
    mode = sys.argv[1]
    closure = path_list(ENV["runtimePath"])
    if mode == "install":
        install_wheel(Path(ENV["wheel"]), closure)
        return
    for directory in path_list(ENV["buildPath"]):
        site.addsitedir(directory)
    # Not under $TMPDIR: Nix's sandbox builds in /build, and hatchling drops a project's .gitignore
    # when that file's patterns match the project root itself (`build/` does); the sdist's excludes
    # are then lost and force-included files are added twice ("A second file is being added").
    # The sandbox has a private /tmp; without the sandbox this is an ordinary temporary directory.
    with tempfile.TemporaryDirectory(prefix="pybuild-", dir="/tmp" if os.access("/tmp", os.W_OK) else None) as work:
        tree = unpack_source(Path(ENV["src"]), Path(work))
        wheel = build_wheel(tree, Path(ENV["dist"]))
        os.chdir(ENV.get("TMPDIR", "/"))
    print(f"{ENV['pname']}: built {wheel.name}")
    install_wheel(wheel, closure)
    path = [str(SITE)] + closure
    import_check(json.loads(ENV["importsCheck"]), path)
    requirements_check(wheel, path)


if __name__ == "__main__":
    main()
