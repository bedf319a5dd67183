#!/usr/bin/env bash
# Fails when a tracked source file cites a document that is not in the repository.
#
# Code comments, scripts, YAML comments and the README must explain themselves with the repo's own
# documents: docs/FIDELITY.md (cited as "docs/FIDELITY.md §4.5" or "docs/FIDELITY.md, decision 5")
# and docs/ARCHITECTURE.md. The design notes the project started from are not part of the repo, so
# a citation of them ("PROTOCOL 4.5", "decision 3", "SEED's main.py", "DESIGN.md", "shared/docs")
# points a reader at nothing. Each offending line is printed as file:line: text.
#
# Allowed on purpose: the `PROTOCOL_VERSION` constant; the data folder the tests and benchmarks
# read (`EVALFLEET_SEED`, `SEED_EVAL`, the `../shared/seed` and `../shared/seed/evaluation`
# defaults); "decision N" on a line that names docs/FIDELITY.md, and anywhere in docs/.
#
# Usage: scripts/check-citations.sh [FILE...]   (default: every tracked source file)
set -euo pipefail
cd "$(dirname "$0")/.."

if (($# > 0)); then
    files=("$@")
elif git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files -- '*.rs' '*.sh' '*.py' '*.yaml' '*.yml' '*.toml' \
        '*.proto' '*.md' '*.Dockerfile' '.ci/*' | grep -v '^scripts/check-citations\.sh$')
else
    # A source tree without git (an unpacked archive): the same files, found by name.
    mapfile -t files < <(find . \( -name target -o -name .git -o -name .models \) -prune -o -type f \
        \( -name '*.rs' -o -name '*.sh' -o -name '*.py' -o -name '*.yaml' -o -name '*.yml' \
        -o -name '*.toml' -o -name '*.proto' -o -name '*.md' -o -name '*.Dockerfile' \
        -o -path './.ci/*' \) -print | sed 's|^\./||' | grep -v '^scripts/check-citations\.sh$' | sort)
fi

# shellcheck disable=SC2016 # the awk program is single-quoted on purpose
awk '
function report(why) {
    printf "%s:%d: %s: %s\n", FILENAME, FNR, why, $0
    bad++
}
{
    line = $0
    gsub(/PROTOCOL_VERSION|EVALFLEET_SEED|SEED_EVAL/, "", line)
    if (line ~ /PROTOCOL|DESIGN|MISSION|STYLE\.md|GPU\.md|shared\/docs/)
        report("cites a design note outside the repo")
    else if (line ~ /(^|[^A-Za-z_])(the|The|as|against) SEED([^A-Za-z_]|$)|(^|[^A-Za-z_])SEED('"'"'s|-style| main| README|\/|\.py)/)
        report("cites the original tool as SEED (say \"the original tool\")")
    else if (line ~ /[Dd]ecision [0-9]/ && line !~ /FIDELITY\.md/ && FILENAME !~ /^docs\//)
        report("\"decision N\" without docs/FIDELITY.md")
    else {
        seed = line
        gsub(/shared\/seed\/evaluation([^\/A-Za-z0-9_]|$)/, "", seed)
        gsub(/shared\/seed([^\/A-Za-z0-9_]|$)/, "", seed)
        if (seed ~ /shared\/seed|\/work\/(shared|main|wt-)/)
            report("cites a path outside the repo")
    }
}
END {
    if (bad) {
        printf "\n%d line(s) cite documents outside the repository; cite docs/FIDELITY.md (\302\247x.y, decision N) or docs/ARCHITECTURE.md instead.\n", bad > "/dev/stderr"
        exit 1
    }
}
' "${files[@]}"
echo "check-citations: ${#files[@]} files, no citation of documents outside the repository" >&2
