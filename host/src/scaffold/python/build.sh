#!/bin/sh
# Builds dist/{{name}}.wasm, with dist/{{name}}.fixtures.json beside it (the
# host checks a component against the fixtures beside it before a swap).
# componentize-py is installed once into .venv, as pinned (with hashes) in
# requirements-build.txt; after that, building needs no network.
set -eu
cd "$(dirname "$0")"
if [ ! -x .venv/bin/componentize-py ]; then
  echo "build.sh: installing componentize-py into .venv" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-input --require-hashes \
    -r requirements-build.txt
fi
mkdir -p dist
# The Python path: this folder (app.py and its modules) and vendor/ (the SDK).
# No VIRTUAL_ENV: componentize-py would put that venv's packages in too.
env -u VIRTUAL_ENV .venv/bin/componentize-py -q -d wit -w transform componentize app -p . -p vendor \
  -o dist/{{name}}.wasm.partial
# Renamed into place: a host watching dist/ never reads half a component.
mv -f dist/{{name}}.wasm.partial dist/{{name}}.wasm
cp fixtures.json dist/{{name}}.fixtures.json
echo "built dist/{{name}}.wasm"
