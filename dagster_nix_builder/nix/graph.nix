# Asks Nix for the packages of a package set (see graph.py and package_source.py). The set is
#   kind = "directory": <location>/default.nix called with the arguments it takes (callPackage files in
#                       <location>/packages/<attr>.nix; their formal arguments naming other attributes are the
#                       dependencies of withInfo = "0", read to name a cycle without infinite recursion),
#   kind = "file":      <location> (a Nix file), called with exactly the arguments given when a function,
#   kind = "flake":     builtins.getFlake <location> (no lock file is written),
# then narrowed to the attribute path `attribute` and to the names that match a `select` regex (all when
# none) and no `exclude` regex. The dependencies proper come from the derivations (derivations.py).
#
# A package whose derivation throws (throw/assert) does not stop the others: it keeps its place with
# `evalFailed = true` and the paths of a stand-in derivation that is never valid, so building it fails with
# Nix's own error; so does one whose tests throw. `only = "<attr>"` evaluates that one package without the
# guard, to read the error message (tryEval does not give it); `attrsJson` (a list) evaluates just those,
# how graph.py finds a package whose `abort` or missing attribute ends a whole evaluation.
{ kind ? "directory", location, attribute ? "[]", checksJson ? "[]", argsJson ? "{}", selectJson ? "[]"
, excludeJson ? "[]", withInfo ? "1", withChecks ? "1", only ? "", attrsJson ? "" }:
let
  inherit (builtins) any attrNames filter fromJSON functionArgs getAttr hasAttr intersectAttrs isAttrs
    isFunction listToAttrs mapAttrs match pathExists tryEval;
  args = fromJSON argsJson;
  root = /. + location;
  top =
    if kind == "flake" then builtins.getFlake location
    else
      let f = import root; in
      if !(isFunction f) then f
      else if kind == "directory" then f (intersectAttrs (functionArgs f) args)
      else f args;
  attrPath = fromJSON attribute;
  at = path: value: where:
    if path == [ ] then value
    else let name = builtins.head path; in
      if isAttrs value && hasAttr name value then at (builtins.tail path) value.${name} "${where}.${name}"
      else throw "${location}: no attribute `${name}` in ${where} (attribute path ${builtins.concatStringsSep "." attrPath})";
  set = at attrPath top (if kind == "flake" then "the flake's outputs" else "its top level");
  selects = fromJSON selectJson;
  excludes = fromJSON excludeJson;
  matches = regexes: n: any (r: match r n != null) regexes;
  # A nixpkgs set also holds functions and helpers (callPackage, override, lib...): not packages (graph.py
  # lists them as skipped). One whose value fails to evaluate is kept, to fail as a package with its error.
  skipped = n: kind != "directory"
    && (let t = tryEval (let v = set.${n}; in !(isAttrs v && (v.type or null) == "derivation")); in t.success && t.value);
  chosen = filter (n: (selects == [ ] || matches selects n) && !(matches excludes n)) (attrNames set);
  names = if attrsJson != "" then fromJSON attrsJson else chosen;
  fileOf = n: root + "/packages/${n}.nix";
  positionOf = n: let p = builtins.unsafeGetAttrPos n set; in if p == null then null else "${p.file}:${toString p.line}";
  depsOf = n:
    let
      file = fileOf n;
      fn = import file;
    in
    if kind == "directory" && pathExists file && isFunction fn
    then filter (a: a != n && hasAttr a set) (attrNames (functionArgs fn))
    else [ ];
  outputsOf = d: listToAttrs (map (o: { name = o; value = d.${o}.outPath; }) (d.outputs or [ "out" ]));
  # A package's tests (`passthru.tests`, an attribute set of derivations) are its Dagster asset checks:
  # the name is the check's name (graph.py says what to do with one Dagster cannot take), `blocking`
  # (default false) and `meta.description` describe it. Its paths are `outputs` as a package's are, since
  # Nix writes any attribute set with an `outPath` attribute as that string in JSON.
  testOf = where: name: t:
    if !(isAttrs t && (t.type or null) == "derivation") then
      throw "${where}.${name} is not a derivation"
    else if !(builtins.isBool (t.blocking or false)) then
      throw "${where}.${name}.blocking must be true or false"
    else {
      drvPath = t.drvPath;
      outputs = outputsOf t;
      blocking = t.blocking or false;
      description = t.meta.description or null;
    };
  testsOf = n: d:
    let under = if d ? tests then "tests" else "passthru.tests"; in
    mapAttrs (name: t: testOf "${n}: passthru.tests" name t // { inherit under; }) (d.tests or (d.passthru.tests or { }));
  # What a package takes from outside the package set (`passthru.localSources`: the rules of its
  # builtins.path filter, e.g. this project's own package): the component hashes those files into its
  # state's fingerprint, so an edit there re-evaluates. Read apart from the derivation, so a package whose
  # derivation throws still names them.
  localSourcesOf = d:
    let tried = tryEval (let s = d.localSources or (d.passthru.localSources or null); in builtins.deepSeq s s);
    in if tried.success then tried.value else null;
  infoOf = n:
    let d = set.${n}; in
    if !(isAttrs d && (d.type or null) == "derivation") then
      throw "${location}: ${n} is not a derivation"
    else {
      drvPath = d.drvPath;
      outputs = outputsOf d;
      version = if d ? version then toString d.version else null;
      pname = d.pname or null;
      description = d.meta.description or null;
      mainProgram = d.meta.mainProgram or null;
      executables = d.executables or (d.passthru.executables or null);
      tests = testsOf n d;
      evalFailed = false;
    };
  standIn = n: derivation {
    name = "evaluation-failed";
    attr = n;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "exit 1" ];
  };
  guardedInfoOf = n:
    let
      info = infoOf n;
      tried = tryEval (builtins.deepSeq info info);
      s = standIn n;
    in
    if tried.success then tried.value else {
      drvPath = s.drvPath;
      outputs = { out = s.outPath; };
      version = null;
      pname = null;
      description = null;
      mainProgram = null;
      executables = null;
      tests = { };
      evalFailed = true;
    };
  # A flake's checks.<system> (`checksPath`): derivations of their own, attached to a package by graph.py.
  # One that throws is marked, to fail alone as a package does (graph.py asks Nix for its message).
  checksPath = fromJSON checksJson;
  checkOf = name: v:
    let t = tryEval (let r = testOf (builtins.concatStringsSep "." checksPath) name v; in builtins.deepSeq r r);
    in if t.success then t.value else { evalFailed = true; };
  checks =
    if checksPath == [ ] || withChecks != "1" then { }
    else let c = tryEval (at checksPath top "the flake's outputs"); in
      if c.success && isAttrs c.value then mapAttrs checkOf c.value else { };
in
if only != "" then builtins.deepSeq (infoOf only) "evaluates"
else {
  takes = if kind == "directory" && isFunction (import root) then attrNames (functionArgs (import root)) else [ ];
  inherit checks;
  packages = listToAttrs (map
    (n: {
      name = n;
      value = if withInfo == "1" && skipped n then { notDerivation = true; } else {
        file = if kind == "directory" && pathExists (fileOf n) then toString (fileOf n) else positionOf n;
        deps = depsOf n;
        localSources = if withInfo == "1" then localSourcesOf set.${n} else null;
      } // (if withInfo == "1" then guardedInfoOf n else { });
    })
    names);
}
