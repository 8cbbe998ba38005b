#!/usr/bin/env bash
# The Debian packages `make test` needs beyond Python: bubblewrap (the sandbox that runs model-written code,
# rankmix.benchmarks.sandbox) and chromium (the rating page's browser test). Installed when this runs as root with
# apt-get; otherwise one line names the command, and setup goes on.
set -euo pipefail
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "rankmix: installing ${need[*]} (Debian packages the tests need)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
    echo "rankmix: the tests need ${need[*]}; install with: sudo apt-get install -y ${need[*]}" >&2
fi
