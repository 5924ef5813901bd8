# Asks Nix for the package graph of a package-set directory (see graph.py).
# Attributes of <dir>/default.nix are the packages; the formal arguments of <dir>/packages/<attr>.nix
# that name other attributes are its dependencies. withInfo = false skips forcing the derivations,
# so a dependency cycle can be reported without running into infinite recursion.
#
# A package whose derivation throws (builtins.throw/assert) does not stop the others: it keeps its place
# and edges in the graph, with `evalFailed = true` and the paths of a stand-in derivation that is never
# valid, so building it fails with Nix's own error; so does one whose tests throw. `only = "<attr>"` evaluates that one package without
# the guard, to read the error message (tryEval does not give it).
{ dir, argsJson ? "{}", withInfo ? "1", only ? "" }:
let
  root = /. + dir;
  args = builtins.fromJSON argsJson;
  f = import root;
  set = if builtins.isFunction f then f (builtins.intersectAttrs (builtins.functionArgs f) args) else f;
  names = builtins.attrNames set;
  fileOf = n: root + "/packages/${n}.nix";
  depsOf = n:
    let
      file = fileOf n;
      fn = import file;
    in
    if builtins.pathExists file && builtins.isFunction fn
    then builtins.filter (a: a != n && builtins.hasAttr a set) (builtins.attrNames (builtins.functionArgs fn))
    else [ ];
  # A package's tests (`passthru.tests`, an attribute set of derivations) are its Dagster asset checks:
  # the name is the check's name (graph.py says what to do with one Dagster cannot take), `blocking`
  # (default false) and `meta.description` describe it. Its paths are `outputs` as a package's are, since
  # Nix writes any attribute set with an `outPath` attribute as that string in JSON.
  testsOf = n: d: builtins.mapAttrs
    (name: t:
      if !(builtins.isAttrs t && (t.type or null) == "derivation") then
        throw "${n}: passthru.tests.${name} is not a derivation"
      else if !(builtins.isBool (t.blocking or false)) then
        throw "${n}: passthru.tests.${name}.blocking must be true or false"
      else {
        drvPath = t.drvPath;
        outputs = builtins.listToAttrs (map (o: { name = o; value = t.${o}.outPath; }) (t.outputs or [ "out" ]));
        blocking = t.blocking or false;
        description = t.meta.description or null;
      })
    (d.tests or (d.passthru.tests or { }));
  # What a package takes from outside the package set (`passthru.localSources`: the rules of its
  # builtins.path filter, e.g. this project's own package): the component hashes those files into its
  # state's fingerprint, so an edit there re-evaluates. Read apart from the derivation, so a package whose
  # derivation throws still names them.
  localSourcesOf = d:
    let tried = builtins.tryEval (let s = d.localSources or (d.passthru.localSources or null); in builtins.deepSeq s s);
    in if tried.success then tried.value else null;
  infoOf = n:
    let d = set.${n}; in
    {
      drvPath = d.drvPath;
      outputs = builtins.listToAttrs (map (o: { name = o; value = d.${o}.outPath; }) (d.outputs or [ "out" ]));
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
      tried = builtins.tryEval (builtins.deepSeq info info);
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
in
if only != "" then builtins.deepSeq (infoOf only) "evaluates"
else
builtins.listToAttrs (map
  (n: {
    name = n;
    value = {
      file = if builtins.pathExists (fileOf n) then toString (fileOf n) else null;
      deps = depsOf n;
      localSources = if withInfo == "1" then localSourcesOf set.${n} else null;
    } // (if withInfo == "1" then guardedInfoOf n else { });
  })
  names)
