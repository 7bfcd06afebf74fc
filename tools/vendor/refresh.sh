#!/bin/sh
# Refresh the vendored browser libraries from the pinned versions in package-lock.json.
#
#   tools/vendor/refresh.sh
#
# Needs Node.js and the npm registry; `make run` and `make test` need neither (the
# built files and their SHA256SUMS are committed). To upgrade a library: change its exact
# version in package.json, run `npm install --save-exact` here to update the lock file,
# run this script, and commit the lock file, the bundles and SHA256SUMS together.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/teleconsult/pages/static/vendor"
axe_out="$root/tests/browser/vendor"
cd "$here"
npm ci --no-audit --no-fund
mkdir -p "$out" "$axe_out"
for name in socket.io-client msgpack noble-ciphers noble-curves noble-hashes livekit-client; do
  # One self-contained, minified ES module per library: the pages import it by path.
  ./node_modules/.bin/esbuild "entries/$name.js" --bundle --format=esm --minify \
    --target=es2020 --platform=browser --legal-comments=eof --log-level=warning \
    --outfile="$out/$name.js"
done
cp node_modules/axe-core/axe.min.js "$axe_out/axe.min.js"
(cd "$out" && sha256sum socket.io-client.js msgpack.js noble-ciphers.js noble-curves.js noble-hashes.js \
  livekit-client.js >SHA256SUMS)
(cd "$axe_out" && sha256sum axe.min.js >SHA256SUMS)
echo "vendored into $out and $axe_out:"
ls -l "$out" "$axe_out"
