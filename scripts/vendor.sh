#!/usr/bin/env bash
# Copies the browser libraries installed by `npm ci` (versions pinned in package-lock.json) into
# static/vendor/, where the site serves them. Nothing third-party is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=static/vendor
rm -rf "$out" && mkdir -p "$out"
cp node_modules/marked/lib/marked.esm.js "$out/marked.esm.js"
cp node_modules/dompurify/dist/purify.es.mjs "$out/purify.es.mjs"
# The source maps the files above name: `collectstatic` of the production build (hashed names)
# follows every reference and fails on a missing one.
cp node_modules/marked/lib/marked.esm.js.map "$out/marked.esm.js.map"
cp node_modules/dompurify/dist/purify.es.mjs.map "$out/purify.es.mjs.map"
cp node_modules/@highlightjs/cdn-assets/es/highlight.min.js "$out/highlight.min.js"
cp node_modules/@highlightjs/cdn-assets/styles/github.min.css "$out/highlight-light.css"
cp node_modules/@highlightjs/cdn-assets/styles/github-dark.min.css "$out/highlight-dark.css"
