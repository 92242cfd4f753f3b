#!/usr/bin/env bash
# Builds the velro-authz image on a machine with no registry access, runs
# it once, and exports it as an OCI archive: Debian's buildah (storage
# driver vfs, isolation chroot) assembles FROM scratch the release binary,
# the shared libraries ldd lists, a passwd entry for the non-root user and
# the writable directories. Needs root (or a user namespace) for buildah.
#
#   bash scripts/build-image.sh            # -> target/image/velro-authz-<version>.oci.tar
#   podman load -i target/image/velro-authz-<version>.oci.tar   (elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="localhost/velro-authz:$version"
out=target/image
archive="$out/velro-authz-$version.oci.tar"
uid=65532
bah=(buildah --storage-driver vfs)
export BUILDAH_ISOLATION=chroot

command -v buildah >/dev/null || {
    echo "buildah is missing: apt-get install buildah" >&2
    exit 1
}

cargo build --release --locked --bin velro-authz
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# The root filesystem: the binary, its libraries (at the paths the loader
# looks in), a user and group, writable /tmp and audit spill directory.
install -D -m 0755 target/release/velro-authz "$root/usr/local/bin/velro-authz"
strip "$root/usr/local/bin/velro-authz"
ldd target/release/velro-authz | awk '/=> \//{print $3} /^\s*\/lib/{print $1}' | sort -u |
    while read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
mkdir -p "$root/etc" "$root/tmp" "$root/var/lib/velro-authz"
chmod 1777 "$root/tmp"
chown "$uid:$uid" "$root/var/lib/velro-authz"
echo "nonroot:x:$uid:$uid:nonroot:/var/lib/velro-authz:/sbin/nologin" > "$root/etc/passwd"
echo "nonroot:x:$uid:" > "$root/etc/group"

ctr=$("${bah[@]}" from scratch)
cleanup() { "${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$root"; }
trap cleanup EXIT
"${bah[@]}" copy -q "$ctr" "$root/" / >/dev/null
"${bah[@]}" config \
    --user "$uid:$uid" \
    --workingdir /var/lib/velro-authz \
    --port 50051 --port 9090 \
    --env VELRO_LISTEN=0.0.0.0:50051 --env VELRO_OPS_LISTEN=0.0.0.0:9090 \
    --entrypoint '["/usr/local/bin/velro-authz"]' --cmd serve \
    --label org.opencontainers.image.title=velro-authz \
    --label "org.opencontainers.image.version=$version" \
    "$ctr"
"${bah[@]}" commit --rm -q "$ctr" "$image" >/dev/null

# Smoke test: the image runs its binary as the non-root user.
run=$("${bah[@]}" from "$image")
cleanup() { "${bah[@]}" rm "$run" >/dev/null 2>&1 || true; rm -rf "$root"; }
help=$("${bah[@]}" run --isolation chroot "$run" -- /usr/local/bin/velro-authz --help)
printf '%s\n' "$help" | sed -n 1,3p
[ "$("${bah[@]}" run --isolation chroot "$run" -- /usr/local/bin/velro-authz --version)" = "velro-authz $version" ] || {
    echo "the image's binary is not version $version" >&2
    exit 1
}

rm -f "$archive"
"${bah[@]}" push -q "$image" "oci-archive:$archive:velro-authz:$version"
size=$("${bah[@]}" images --format '{{.Size}}' "$image")
user=$("${bah[@]}" inspect --format '{{.OCIv1.Config.User}}' "$image")
echo "image $image ($size, user $user): $(du -h "$archive" | cut -f1) OCI archive at $archive"
