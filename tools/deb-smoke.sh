#!/usr/bin/env bash
# `apt install` of the .debs `make deb` built (issue 16: a Debian machine installs them and runs every language's
# example against them). Installs liblora-sd0, liblora-sd-dev, lora-sd, lora-sd-data and python3-lora-sd from
# DEB_DIR (default build/deb), then uses only what they installed, never the build tree:
#   - C: examples/hello.c compiled with `pkg-config --cflags --libs lora_sd` (the installed lora_sd.pc);
#   - the CLI: /usr/bin/lora-sd --version, a tiny `lora-sd generate` on tests/data/sd-tiny, a single-file model whose
#     configs come from lora-sd-data (/usr/share/lora_sd), its man page;
#   - Go and Rust: bindings/go/examples/generate and bindings/rust's `generate` example built against the installed
#     library through pkg-config, run without LD_LIBRARY_PATH;
#   - Python: /usr/bin/python3 imports lora_sd from python3-lora-sd and generates;
# every generation has the same seed and settings, and all give the same pixels (decoded by the installed library).
# Then removes the packages again, also when a check fails, so what runs next sees the machine as before.
# Needs root or sudo (apt-get). CI (.ci/run) runs it after `make deb`:  tools/deb-smoke.sh [DEB_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
debs=$(cd "${1:-build/deb}" && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
# Nothing may point back at a build tree.
unset LD_LIBRARY_PATH LIBRARY_PATH CPATH C_INCLUDE_PATH PKG_CONFIG_PATH CGO_CFLAGS CGO_LDFLAGS LSD_DATA_DIR \
    LORA_SD_LIBRARY LORA_SD_LIB_DIR PYTHONPATH

say() { printf 'deb-smoke: %s\n' "$*"; }
fail() { say "FAIL: $*" >&2; exit 1; }

packages=(liblora-sd0 liblora-sd-dev lora-sd lora-sd-data python3-lora-sd)
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
files=()
for p in "${packages[@]}"; do
    f=("$debs/${p}_${version}_"*.deb)
    if [ ${#f[@]} -ne 1 ] || [ ! -e "${f[0]}" ]; then
        fail "$debs has no single ${p}_${version}_*.deb: run make deb first"
    fi
    files+=("${f[0]}")
    # Removing them afterwards must not take away an installation that was there before.
    ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        fail "$p is installed already; remove it first"
done

tmp=$(mktemp -d)
cleanup() {
    rc=$?
    say "apt-get remove -y --purge ${packages[*]}"
    $sudo apt-get remove -y --purge "${packages[@]}" >"$tmp/remove.log" 2>&1 || { cat "$tmp/remove.log"; rc=1; }
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT

say "apt-get install -y ${files[*]#"$debs/"}"
$sudo apt-get install -y --no-install-recommends "${files[@]}" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log"; fail "apt-get install"; }

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=/usr/lib/$multiarch
lib=$libdir/liblora_sd.so.0
dpkg -L liblora-sd0 | grep -qx "$lib" || fail "liblora-sd0 does not install $lib"
# A program uses the installed library when the dynamic loader resolves liblora_sd.so.0 to it.
uses_installed() {
    local got
    got=$(ldd "$1" | awk '$1 == "liblora_sd.so.0" {print $3}')
    [ "$(readlink -f "$got")" = "$(readlink -f "$lib")" ] || fail "$1 loads liblora_sd.so.0 from '$got', not $lib"
}

tiny=$repo/tests/data/sd-tiny
gen=(--steps 3 --sampler euler_a --seed 7 --width 32 --height 32 --guidance 7.5)

say "C: cc examples/hello.c \$(pkg-config --cflags --libs lora_sd)"
[ "$(pkg-config --variable=libdir lora_sd)" = "$libdir" ] || fail "pkg-config: libdir is not $libdir"
[ "$(pkg-config --modversion lora_sd)" = "$(dpkg-query -W -f '${Version}' liblora-sd-dev)" ] ||
    fail "pkg-config --modversion differs from the package's version"
# shellcheck disable=SC2046  # pkg-config's flags are words
cc "$repo/examples/hello.c" $(pkg-config --cflags --libs lora_sd) -o "$tmp/hello"
uses_installed "$tmp/hello"
"$tmp/hello" "$tiny" >"$tmp/hello.out"
grep -q "^liblora_sd $version, libtorch" "$tmp/hello.out" || fail "hello: $(cat "$tmp/hello.out")"
grep -q "^UNet [1-9][0-9]*, VAE [1-9]" "$tmp/hello.out" || fail "hello: $(cat "$tmp/hello.out")"

say "CLI: lora-sd --version; lora-sd generate ${gen[*]}"
[ "$(command -v lora-sd)" = /usr/bin/lora-sd ] || fail "lora-sd is $(command -v lora-sd), not /usr/bin/lora-sd"
uses_installed /usr/bin/lora-sd
lora-sd --version | grep -qx "lora-sd $version" || fail "lora-sd --version: $(lora-sd --version | head -1)"
lora-sd generate --model "$tiny" --prompt "a red cube" "${gen[@]}" --output "$tmp/cli.png" >"$tmp/cli.log" 2>&1 ||
    { cat "$tmp/cli.log"; fail "lora-sd generate"; }
# A single file needs SD 1.x's configs and tokenizer: the library finds lora-sd-data's; the tiny weights do not fit
# them, and the message says so after the configs were read.
lora-sd generate --model "$repo/tests/data/sd-tiny-sf/single-file/model.safetensors" --steps 1 --output /dev/null \
    >"$tmp/sf.log" 2>&1 && fail "a single tiny file loaded as SD 1.x"
grep -q 'text_encoder: 112 missing, 84 mis-shaped' "$tmp/sf.log" || fail "lora-sd-data's configs: $(cat "$tmp/sf.log")"
man -w lora-sd-generate | grep -q '^/usr/share/man/man1/lora-sd-generate\.1' || fail "no man page lora-sd-generate"

say "Go: go build ./examples/generate (cgo, pkg-config)"
(cd bindings/go && GOPROXY=off GOCACHE="$tmp/go-cache" go build -o "$tmp/go-generate" ./examples/generate)
uses_installed "$tmp/go-generate"
"$tmp/go-generate" "$tiny" "a red cube" "$tmp/go.png" 3 32

say "Rust: cargo build --offline --example generate (build.rs asks pkg-config)"
(cd bindings/rust && CARGO_TARGET_DIR="$tmp/rust" cargo build --offline --quiet --example generate)
uses_installed "$tmp/rust/debug/examples/generate"
"$tmp/rust/debug/examples/generate" "$tiny" "a red cube" "$tmp/rust.png" 3 32

say "Python: /usr/bin/python3 -I -c 'import lora_sd ...'; the same pixels everywhere"
(cd "$tmp" && /usr/bin/python3 -I - "$tiny" "$tmp" "$lib" <<'EOF'
import ctypes, os, sys
import lora_sd
from lora_sd import _native as N

tiny, tmp, lib = sys.argv[1:]
assert lora_sd.__file__.startswith("/usr/lib/python3/dist-packages/lora_sd/"), lora_sd.__file__
with open("/proc/self/maps") as f:
    mapped = {line.split()[-1] for line in f if "liblora_sd.so" in line}
assert {os.path.realpath(p) for p in mapped} == {os.path.realpath(lib)}, mapped
with lora_sd.Model(tiny) as model:
    model.generate("a red cube", steps=3, sampler="euler_a", seed=7, width=32, height=32,
                   guidance_scale=7.5)[0].save_png(os.path.join(tmp, "python.png"))

N.lib.lsd_image_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(N.Image)]


def pixels(name):
    img = N.Image()
    img.struct_size = ctypes.sizeof(img)
    assert N.lib.lsd_image_load(os.path.join(tmp, name).encode(), ctypes.byref(img)) == 0, N.last_error()
    data = (img.width, img.height, ctypes.string_at(img.data, img.width * img.height * img.channels))
    N.image_release(ctypes.byref(img))
    return data

want = pixels("cli.png")
assert want[:2] == (32, 32) and len(set(want[2])) > 16, "a 32x32 image, not a constant"
for name in ("python.png", "go.png", "rust.png"):
    assert pixels(name) == want, f"{name}: pixels differ from lora-sd generate's"
print("deb-smoke: lora-sd generate, Python, Go and Rust: the same 32x32 pixels")
EOF
) || fail "python3-lora-sd"
say "ok: the installed packages build and run C, the CLI, Go, Rust and Python"
