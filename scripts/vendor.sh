#!/usr/bin/env bash
# Copies the browser libraries installed by `npm ci` (versions pinned in package-lock.json) into
# static/vendor/, where the site serves them. Nothing third-party is committed.
#
# The files are gathered in a fresh folder first and then copied over static/vendor/'s own files:
# the folder itself is kept (it may be a link to one shared by several checkouts, and running
# servers keep reading it), and what a library no longer ships is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
out=static/vendor
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp node_modules/marked/lib/marked.esm.js "$stage/marked.esm.js"
cp node_modules/dompurify/dist/purify.es.mjs "$stage/purify.es.mjs"
# The source maps the files above name: `collectstatic` of the production build (hashed names)
# follows every reference and fails on a missing one.
cp node_modules/marked/lib/marked.esm.js.map "$stage/marked.esm.js.map"
cp node_modules/dompurify/dist/purify.es.mjs.map "$stage/purify.es.mjs.map"
cp node_modules/@highlightjs/cdn-assets/es/highlight.min.js "$stage/highlight.min.js"
cp node_modules/@highlightjs/cdn-assets/styles/github.min.css "$stage/highlight-light.css"
cp node_modules/@highlightjs/cdn-assets/styles/github-dark.min.css "$stage/highlight-dark.css"
# KaTeX for math in answers: the ES module, its stylesheet and every font the stylesheet names
# (woff2, woff and ttf: collectstatic follows each url()).
mkdir -p "$stage/katex"
cp node_modules/katex/dist/katex.mjs "$stage/katex/katex.mjs"
cp node_modules/katex/dist/katex.min.css "$stage/katex/katex.min.css"
cp -r node_modules/katex/dist/fonts "$stage/katex/fonts"
mkdir -p "$out"
cp -r "$stage/." "$out/"
# Files left from an earlier version of a library: in static/vendor/ but no longer staged.
(cd "$out" && find . -type f) | while read -r file; do
  [ -e "$stage/$file" ] || rm -f "$out/$file"
done
