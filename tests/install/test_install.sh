#!/bin/sh
# Installs the build into a temporary prefix and builds tests/install/hello_loop.c against it
# the way a user does, through pkg-config: once against libpier.so (run with
# LD_LIBRARY_PATH), once against libpier.a (--static). Each program must run and print its
# line. The headers, the library and the .pc file must all come from the prefix, so a
# pier installed elsewhere on the machine cannot stand in for a missing file.
#   usage: test_install.sh CMAKE BUILD_DIR LIBDIR VERSION
#   env:   CC (the build's compiler), PIER_TEST_CFLAGS (its sanitizer flags, if any)
set -eu
if [ $# -ne 4 ]; then
    echo "usage: $0 CMAKE BUILD_DIR LIBDIR VERSION" >&2
    exit 2
fi
cmake=$1 build=$2 libdir=$3 version=$4
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-cc}
extra=${PIER_TEST_CFLAGS:-}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pier-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
prefix=$tmp/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

"$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "cmake --install"; }

export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig"
got=$(pkg-config --modversion pier) || fail "pkg-config finds no pier in $PKG_CONFIG_PATH"
[ "$got" = "$version" ] || fail "pier.pc says version $got, the build is $version"
cflags=$(pkg-config --cflags pier)
libs=$(pkg-config --libs pier)
slibs=$(pkg-config --static --libs pier)
echo "cflags: $cflags"
echo "libs: $libs"
echo "static libs: $slibs"
case "$(pkg-config --variable=libdir pier)" in
    "$prefix"/*) ;;
    *) fail "pier.pc's libdir is not inside the prefix it was installed to" ;;
esac

# Every pier header the program sees must be an installed one.
# shellcheck disable=SC2086
"$cc" $cflags -M "$here/hello_loop.c" >"$tmp/deps" || fail "hello_loop.c does not compile"
tr ' \\' '\n\n' <"$tmp/deps" | grep '/pier/[^/]*\.h$' >"$tmp/headers" || fail "no pier header used"
if grep -v "^$prefix/" "$tmp/headers"; then
    fail "the headers above come from outside the installed prefix"
fi

# shared: the program needs LD_LIBRARY_PATH and must load the installed libpier.so.0
# shellcheck disable=SC2086
"$cc" $extra $cflags "$here/hello_loop.c" -o "$tmp/hello_shared" $libs || fail "shared link"
LD_LIBRARY_PATH="$prefix/$libdir" ldd "$tmp/hello_shared" >"$tmp/ldd"
grep -q "libpier.so.0 => $prefix/$libdir/libpier.so.0" "$tmp/ldd" ||
    { cat "$tmp/ldd" >&2; fail "hello_shared does not load the installed libpier.so.0"; }
out=$(LD_LIBRARY_PATH="$prefix/$libdir" "$tmp/hello_shared") || fail "hello_shared failed"
[ "$out" = "loop created and freed" ] || fail "hello_shared printed: $out"

# static: libpier.a taken from the prefix (-Bstatic, since libpier.so sits beside it), and
# the program runs with no libpier.so anywhere in reach
# shellcheck disable=SC2086
"$cc" $extra $cflags "$here/hello_loop.c" -o "$tmp/hello_static" \
    -Wl,-Bstatic $slibs -Wl,-Bdynamic -Wl,--trace >"$tmp/trace" || fail "static link"
grep -q "^$prefix/.*libpier\.a" "$tmp/trace" || fail "libpier.a was not taken from the prefix"
if ldd "$tmp/hello_static" | grep libpier; then
    fail "hello_static depends on a shared libpier"
fi
out=$("$tmp/hello_static") || fail "hello_static failed"
[ "$out" = "loop created and freed" ] || fail "hello_static printed: $out"
echo "ok: installed headers, pier.pc, libpier.so and libpier.a all work"
