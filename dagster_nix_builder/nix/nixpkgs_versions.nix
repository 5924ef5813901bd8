# Facts for nixpkgs_versions.py, asked of Nix instead of read from Nix text. Evaluate one attribute:
#   -A set      for each Python package of the set in `dir` (the attributes with a `dist` output): the
#               expression's pythonRelaxDeps and the python3Packages attributes it depends on. Evaluated in
#               the bootstrap scope, which needs no nixpkgs and builds nothing to answer; the expressions
#               (and so these facts) are the same in both scopes.
#   -A nixpkgs  python3.pythonVersion and python3Packages.<attr>.version (null where nixpkgs lacks the
#               attribute or it fails to evaluate) of the nixpkgs at `nixpkgs` ("" = <nixpkgs> on NIX_PATH),
#               for the attributes in `attrsJson`.
{ dir ? "", nixpkgs ? "", attrsJson ? "[]" }:
let
  inherit (builtins) attrNames filter fromJSON hasAttr listToAttrs tryEval;

  packages = import (/. + dir) { scope = "bootstrap"; };
  pythonPackages = filter (n: packages.${n} ? dist) (attrNames packages);
  # Dependencies that are not packages of the set itself come from python3Packages; installWheel sets
  # pname to the attribute name.
  fromNixpkgs = p: filter (n: !(hasAttr n packages)) (map (d: d.pname) p.pythonDependencies);

  pkgs = import (if nixpkgs == "" then <nixpkgs> else /. + nixpkgs) { };
  versionOf = attr:
    let tried = tryEval (pkgs.python3Packages.${attr}.version or null);
    in if tried.success then tried.value else null;
in
{
  set = listToAttrs (map (name: {
    inherit name;
    value = {
      # The bootstrap scope passes pythonRelaxDeps to its builder as JSON (pybuild.py reads it too).
      relaxDeps = fromJSON packages.${name}.drvAttrs.relaxDeps;
      dependencies = fromNixpkgs packages.${name};
    };
  }) pythonPackages);

  nixpkgs = {
    python3 = pkgs.python3.pythonVersion;
    versions = listToAttrs (map (attr: { name = attr; value = versionOf attr; }) (fromJSON attrsJson));
  };
}
