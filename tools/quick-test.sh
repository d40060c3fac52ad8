#!/bin/sh
# Builds a test binary from the given C sources plus the pure-C core (no libtorch), for working on one part
# while the rest of the tree is in flux. Usage: tools/quick-test.sh OUT SRC.c... ; then run OUT [filter].
set -e
out=$1; shift
pkgs="libpng libturbojpeg libwebp libcjson libutf8proc libzip zlib libcrypto"
core="lib/core/error.c lib/core/log.c tests/main.c tests/util.c lib/io/safetensors.c lib/io/safetensors_write.c lib/io/atomic.c lib/io/json.c lib/io/file.c"
srcs=""
for f in $core "$@"; do case " $srcs " in *" $f "*) ;; *) [ -f "$f" ] && srcs="$srcs $f";; esac; done
${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror $(${CC:-cc} -Werror -Wno-format-truncation -E - </dev/null >/dev/null 2>&1 && echo -Wno-format-truncation) -fsanitize=address,undefined -Iinclude -Ilib -Ishim \
    $(pkg-config --cflags $pkgs) -o "$out" $srcs $(pkg-config --libs $pkgs) -lm -lpthread
