#!/usr/bin/env bash
# Fetches, here, the Debian packages the GPU check needs on the lent device machine, which
# has CUDA, nvcc, gcc and PyTorch but none of Debian's -dev packages and no network: their
# .deb files go to .debs/ (ignored by git; the device call carries it), and
# scripts/gpu-check.sh unpacks them into a private sysroot there. The test data the
# integration test reads (the BERT vocabulary and TinyStories' valid.txt, never test.txt) is
# copied beside them into .debs/data, since ../shared does not travel. Run once before the call:
#   scripts/gpu-debs.sh
# then, with the device tool: run  command="bash scripts/gpu-check.sh"  carry=[".debs"].
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(
  # the core library and bin/cdcd
  libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libopenblas0 libgfortran5
  libutf8proc-dev libutf8proc2 libssl-dev libssl3 libcjson-dev libcjson1
  # bin/cdcdd (the daemon on the GPU)
  libmicrohttpd-dev libmicrohttpd12 libsqlite3-dev libsqlite3-0 libuv1-dev libuv1
  libgnutls30 libnettle8 libhogweed6 libp11-kit0 libidn2-0 libunistring2 libtasn1-6 libgmp10 libffi8
  # pkg-config, which the Makefile asks for the flags
  pkgconf pkgconf-bin libpkgconf3
)
mkdir -p .debs
grep -qxF '/.debs/' .git/info/exclude 2>/dev/null || echo '/.debs/' >>.git/info/exclude
rm -f .debs/*.deb
(cd .debs && apt-get download "${PKGS[@]}")
SHARED=${CDCD_SHARED_DATA:-../shared/data}
mkdir -p .debs/data/tinystories
cp "$SHARED/bert-base-uncased-vocab.txt" .debs/data/
cp "$SHARED/tinystories/valid.txt" .debs/data/tinystories/
echo "gpu-debs: $(ls .debs/*.deb | wc -l) packages and the test data, $(du -sh .debs | cut -f1) in .debs/"
