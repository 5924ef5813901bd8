# The names the package expressions use, taken from nixpkgs itself.
{ pkgs }:
{
  inherit (pkgs) runCommand fetchgit fetchPypi python3 python3Packages postgresql;
}
