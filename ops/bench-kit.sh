# shellcheck shell=bash
# ops/bench-kit.sh — `ops/bench kit`, sourced by ops/bench once the release `tally` is built.
# Uses ops/bench's variables: ROOT tally kit_out. Writes one tarball (DESIGN §10, "Bench kit"):
#   tally-bench-kit/run                          the runner (ops/kit/run)
#   tally-bench-kit/bin/{tally,runas,curl}       runas: ops/kit/runas.c, static; tally's
#                                                resource bundles (migrations) beside it
#   tally-bench-kit/lib/*.so*                    every shared library of the above and of
#                                                PostgreSQL but glibc's own (LD_LIBRARY_PATH)
#   tally-bench-kit/lib/postgresql/15/{bin,lib}  Debian's PostgreSQL 15, LLVM JIT left out
#   tally-bench-kit/share/postgresql/15          its share files (Debian's relative layout)
#   tally-bench-kit/ops/{lib.sh,bench-export.sh} what the runner sources
#   tally-bench-kit/prices/default.yaml

pg_root=/usr/lib/postgresql/15
[[ -x "$pg_root/bin/postgres" ]] || tally_die "the kit packs Debian's PostgreSQL 15 (apt-get install postgresql-15)"
kit_dir="$ROOT/.tally/kit"
stage="$kit_dir/tally-bench-kit"
out="${kit_out:-$kit_dir/tally-bench-kit.tar.xz}"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib/postgresql/15/bin" "$stage/lib/postgresql/15/lib" "$stage/share/postgresql" \
    "$stage/ops" "$stage/prices"

install -m 755 "$tally" "$stage/bin/tally"
strip "$stage/bin/tally"
# Resource bundles (the migrations) sit next to the binary, where Bundle.module looks first.
for bundle in "$(dirname "$tally")"/*.resources; do
    cp -a "$bundle" "$stage/bin/"
done
gcc -static -Os -o "$stage/bin/runas" "$ROOT/ops/kit/runas.c"
strip "$stage/bin/runas"
command -v curl >/dev/null || tally_die "curl is needed to build the kit (apt-get install curl)"
install -m 755 "$(command -v curl)" "$stage/bin/curl"
for program in postgres initdb pg_ctl psql pgbench; do
    install -m 755 "$pg_root/bin/$program" "$stage/lib/postgresql/15/bin/$program"
done
# Server modules (plpgsql, text search dictionaries, encodings …); no JIT, no other extensions' build.
for module in "$pg_root"/lib/*.so; do
    case "$(basename "$module")" in llvmjit* | citus*) continue ;; esac
    install -m 644 "$module" "$stage/lib/postgresql/15/lib/"
done
cp -a /usr/share/postgresql/15 "$stage/share/postgresql/15"
rm -rf "$stage/share/postgresql/15/extension"/citus*
install -m 755 "$ROOT/ops/kit/run" "$stage/run"
install -m 644 "$ROOT/ops/lib.sh" "$ROOT/ops/bench-export.sh" "$ROOT/ops/bench-statements.sql" "$stage/ops/"
install -m 644 "$ROOT/ops/prices/default.yaml" "$stage/prices/default.yaml"

# Shared libraries of every binary and module, found by ldd, except glibc's (the host's).
glibc='^(linux-vdso|ld-linux-x86-64|libc|libm|libpthread|libdl|librt|libresolv|libutil|libanl|libnsl)\.so'
for object in "$stage"/bin/tally "$stage"/bin/curl "$stage"/lib/postgresql/15/bin/* "$stage"/lib/postgresql/15/lib/*.so; do
    ldd "$object" 2>/dev/null | sed -n 's/^[[:space:]]*\([^ ]*\) => \(\/[^ ]*\).*/\1 \2/p'
done | sort -u | while read -r name path; do
    [[ "$name" =~ $glibc ]] && continue
    [[ -e "$stage/lib/$name" ]] || install -m 644 "$(realpath "$path")" "$stage/lib/$name"
done
strip --strip-unneeded "$stage"/lib/*.so* 2>/dev/null || true

tally_log "packing $out (xz -9, a minute or two)"
tar -C "$kit_dir" -cf - tally-bench-kit | xz -9 -T2 >"$out"
size=$(stat -c %s "$out")
glibc_needed="$(for object in "$stage"/bin/tally "$stage"/lib/*.so* "$stage"/lib/postgresql/15/bin/*; do
    objdump -T "$object" 2>/dev/null | grep -o 'GLIBC_2\.[0-9]*' ; done | sort -uV | tail -n 1)"
printf 'bench kit: %s (%.1f MB; limit 60 MB), needs %s or newer on the host\n' "$out" "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" "$glibc_needed"
((size <= 60 * 1000 * 1000)) || tally_die "the kit is larger than 60 MB"
printf 'run it: tar -xJf %s && tally-bench-kit/run all   (as root; ./run --help)\n' "$(basename "$out")"
