#!/usr/bin/env bash
# The nightly drop-folder job is `thulium-import sync` (README.md, "Nightly
# syncs"); this wrapper keeps the old call working:
#   nightly.sh DROP_DIR MAPPING [STATE]   (STATE also from THULIUM_STATE)
# with NIGHTLY_SETTLE_SECONDS (--settle, default 5), NIGHTLY_ARGS (more flags,
# e.g. "--rate 20") and THULIUM_IMPORT (the binary). Ledgers and reports stay
# beside the files (--work-dir DROP_DIR), where this script always kept them,
# so that the ledgers of earlier nights are continued.
state=${3:-${THULIUM_STATE:-}}
# shellcheck disable=SC2086 # NIGHTLY_ARGS is a list of flags
exec "${THULIUM_IMPORT:-thulium-import}" sync "$1" --mapping "$2" --work-dir "$1" ${state:+--state "$state"} --settle "${NIGHTLY_SETTLE_SECONDS:-5}" --no-progress --log-format json ${NIGHTLY_ARGS:-}
