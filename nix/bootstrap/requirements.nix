# What nix/bootstrap/lock.py locks, read from the package set itself (nothing listed by hand):
#   own           the distributions the set builds (never taken from the index as wheels);
#   requirements  PEP 508 lines pip resolves: each monorepo package's distribution at the version its
#                 versionScheme gives (`dagster-src.package`), plus `passthru.requirements` of packages
#                 that are not on the index (this project's own, read from its pyproject.toml).
#   nix-instantiate --eval --strict --json nix/bootstrap/requirements.nix [--argstr dagsterVersion 1.13.28]
{ dagsterVersion ? null
, hostPython ? "/usr/bin/python3"
}:
let
  pins = builtins.fromJSON (builtins.readFile ../pins.json);
  # Another release: the declarations derive every version from it.
  released = if dagsterVersion == null then pins else pins // {
    source = "release";
    release = (pins.release or { }) // { version = dagsterVersion; };
  };
  set = import ../default.nix { scope = "bootstrap"; pins = released; inherit hostPython; requireWheelLock = false; };
  declarations = set.dagster-src.declarations;
  names = builtins.attrNames declarations;
  extra = builtins.concatLists (map (attr: set.${attr}.passthru.requirements or set.${attr}.requirements or [ ])
    (builtins.filter (attr: !(declarations ? ${attr})) (builtins.attrNames set)));
  problems = builtins.filter (p: p != null) (map (attr: declarations.${attr}.problem) names);
in
if problems != [ ] then throw (builtins.concatStringsSep "\n" problems)
else if released.source != "release" then
  throw "nix/bootstrap/requirements.nix: nix/pins.json follows git (${released.git.url or "?"}), whose versions are not on the index: pass --dagster-version <release> or --requirements <file> to lock.py"
else {
  version = released.release.version;
  own = map (attr: declarations.${attr}.distribution) names;
  requirements = map (attr: "${declarations.${attr}.distribution}==${declarations.${attr}.version}") names ++ extra;
}
