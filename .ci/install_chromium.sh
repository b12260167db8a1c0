#!/usr/bin/env bash
# Installs Debian's `chromium` for the browser tests of reports/, where it is missing and the
# machine allows it (root or password-less sudo, apt). Never fails the set-up: without a browser
# those tests skip, except under .ci/run, which requires them.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo -n"
if command -v apt-get >/dev/null 2>&1; then
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium >/dev/null 2>&1; }
fi
command -v chromium >/dev/null 2>&1 ||
  echo "note: chromium is not installed; the report browser tests will be skipped" >&2
exit 0
