#!/usr/bin/env bash
# Opens an evalfleet report.html in headless Chromium (Debian's `chromium` package), takes a
# screenshot and checks that it is not blank: the page must draw its table and charts, not just a
# white sheet. Usage:
#   scripts/report-screenshot.sh [OUTPUT_DIR_OR_SWEEP_DIR] [SCREENSHOT.png]
# Without arguments it reports a copy of the seed-shaped test fixture
# (coordinator/tests/fixtures/report_seed_output) and writes report-screenshot.png in the
# current directory. Exits non-zero if Chromium is missing or the screenshot is blank.
# The binary is built in $CARGO_TARGET_DIR (default: target/); EVALFLEET_SHOT_SIZE sets the
# window (default 1280,2000).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
src="${1:-$repo/coordinator/tests/fixtures/report_seed_output}"
shot="$(realpath -m "${2:-report-screenshot.png}")"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
    echo "error: no chromium on PATH; install Debian's package: apt-get install chromium" >&2
    exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Report a copy so that the fixture (or the user's folder) is never written to.
cp -r "$src" "$work/in"
(cd "$repo" && cargo build --quiet -p evalfleet --bin evalfleet)
"${CARGO_TARGET_DIR:-$repo/target}/debug/evalfleet" report "$work/in" >/dev/null
"$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size="${EVALFLEET_SHOT_SIZE:-1280,2000}" \
    --screenshot="$shot" "file://$work/in/report.html" >/dev/null 2>&1
python3 - "$shot" <<'PY'
# Decodes the PNG with the standard library only and measures how much of it is drawn.
import struct, sys, zlib

def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG file"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, f"{path}: unexpected PNG format"
            channels = {2: 3, 6: 4}[color]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if filt == 1: line[i] = (line[i] + a) & 255
            elif filt == 2: line[i] = (line[i] + b) & 255
            elif filt == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows

path = sys.argv[1]
width, height, channels, rows = pixels(path)
colours, drawn = set(), 0
for row in rows:
    for x in range(0, len(row), channels):
        px = row[x:x + 3]
        colours.add(px)
        drawn += px != b"\xff\xff\xff"
share = drawn / (width * height)
print(f"{path}: {width}x{height}, {len(colours)} colours, {100 * share:.1f}% of pixels drawn")
if len(colours) < 16 or share < 0.02:
    sys.exit(f"{path}: the screenshot looks blank")
PY
