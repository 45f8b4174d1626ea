#!/usr/bin/env bash
# Security advisories for the dependency tree (RustSec), for a scheduled job: CI does not run
# this, since it needs to download the advisory database. Uses deny.toml's [advisories] section.
# Needs cargo-deny (see .ci/run for how CI installs it) and network access to the database.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo deny --workspace --locked check advisories "$@"
