#!/bin/sh
# Shows that abi/lora_sd.abignore lets abidiff pass a field appended to a growable struct and only that: builds four
# tiny libraries (a base, an appended field, a field inserted in the middle, a field appended to the frozen
# lsd_image) and checks abidiff's verdict on each. Usage: abi/check-suppressions.sh SCRATCH_DIR
set -eu
dir=$1
supp=$(cd "$(dirname "$0")" && pwd)/lora_sd.abignore
rm -rf "$dir" && mkdir -p "$dir"
variant() { # name, lsd_model_params fields, lsd_image fields
    mkdir -p "$dir/$1/include"
    cat > "$dir/$1/include/t.h" <<H
#include <stddef.h>
typedef struct lsd_model_params { size_t struct_size; $2 } lsd_model_params;
typedef struct lsd_image { size_t struct_size; $3 } lsd_image;
int lsd_f(const lsd_model_params *p);
int lsd_g(lsd_image *images);
H
    printf '#include "t.h"\nint lsd_f(const lsd_model_params *p) { return (int)p->struct_size; }\nint lsd_g(lsd_image *i) { return (int)i->struct_size; }\n' > "$dir/$1/t.c"
    ${CC:-cc} -g -shared -fPIC -I"$dir/$1/include" -o "$dir/$1/libt.so" "$dir/$1/t.c"
    abidw --headers-dir "$dir/$1/include" --drop-private-types --exported-interfaces-only --no-show-locs \
        --no-comp-dir-path --no-corpus-path "$dir/$1/libt.so" > "$dir/$1/t.abi"
}
verdict() { # variant, expected abidiff exit status
    st=0
    abidiff --suppressions "$supp" "$dir/base/t.abi" "$dir/$1/t.abi" > "$dir/$1.diff" || st=$?
    if [ "$st" -ne "$2" ]; then
        echo "check-suppressions: $1: abidiff exit $st, expected $2"; cat "$dir/$1.diff"; exit 1
    fi
}
variant base "int a;" "int w;"
variant appended "int a; int b;" "int w;"
variant inserted "int b; int a;" "int w;"
variant image "int a;" "int w; int h;"
verdict appended 0
verdict inserted 4
verdict image 4
echo "check-suppressions: an appended field passes; a field inserted in the middle and a grown lsd_image are reported"
