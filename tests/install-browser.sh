#!/bin/sh
# Best effort: install Debian's chromium for the HTML report's browser test
# (tests/harness/test_report_html.py), which skips, saying why, without it.
# Never fails the build: no apt-get, no root and no sudo, or no network only print a note.
set -u

note() { echo "install-browser: $*; the HTML report's browser test will skip" >&2; }

for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    note "no apt-get here (install chromium with your package manager)"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    note "installing chromium needs root or password-less sudo (sudo apt-get install chromium)"
    exit 0
fi

install() {
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
        >/dev/null 2>&1
}

echo "install-browser: installing Debian's chromium with apt-get" >&2
if install || { $as_root apt-get update -qq >/dev/null 2>&1 && install; }; then
    exit 0
fi
note "apt-get could not install chromium (offline, or no such package here)"
exit 0
