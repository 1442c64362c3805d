#!/usr/bin/env bash
# Adds the index the local broker's SQLite storage lacks (see indexes.sql beside this script) to a
# Tansu database file, creating the file when there is none yet. Run it before the broker starts
# (the broker does not wait for another writer's lock); safe to run again on an existing database.
#
#   dev/tansu/apply-indexes.sh path/to/tansu.db
set -euo pipefail
sqlite3 -bail "$1" < "$(cd "$(dirname "$0")" && pwd)/indexes.sql"
