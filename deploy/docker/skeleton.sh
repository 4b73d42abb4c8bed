#!/bin/sh
# deploy/docker/skeleton.sh SRC DEST — the workspace's manifests with stub
# sources, for the Dockerfile's dependency layer: DEST holds Cargo.toml,
# Cargo.lock and every crate's Cargo.toml, and an empty stand-in for each
# target root (library, binary, test, bench, example, build script), so cargo
# can build every dependency before the real sources are copied in. The layer
# built from DEST changes only when a manifest or the lock file does.
set -eu
src=$1
dest=$2
mkdir -p "$dest"
cp "$src/Cargo.toml" "$src/Cargo.lock" "$dest/"
cd "$src"
for manifest in crates/*/Cargo.toml; do
    crate=$(dirname "$manifest")
    mkdir -p "$dest/$crate"
    cp "$manifest" "$dest/$crate/"
    # Target roots: src/lib.rs, src/main.rs, src/bin/*.rs, build.rs, and the
    # top-level files and per-directory main.rs of tests/, benches/, examples/.
    find "$crate" \( -path "$crate/src/lib.rs" -o -path "$crate/src/main.rs" \
        -o -path "$crate/src/bin/*.rs" -o -path "$crate/build.rs" \
        -o -path "$crate/tests/*" -o -path "$crate/benches/*" -o -path "$crate/examples/*" \) \
        -name '*.rs' -type f | while read -r file; do
        case $file in
            "$crate"/tests/*/*/* | "$crate"/benches/*/*/* | "$crate"/examples/*/*/*) continue ;;
            "$crate"/tests/*/*.rs | "$crate"/benches/*/*.rs | "$crate"/examples/*/*.rs)
                [ "$(basename "$file")" = main.rs ] || continue ;;
        esac
        mkdir -p "$dest/$(dirname "$file")"
        if [ "$file" = "$crate/src/lib.rs" ]; then
            : >"$dest/$file"
        else
            echo 'fn main() {}' >"$dest/$file"
        fi
    done
done
