# For those with a container engine: the same image as `cargo xtask image` writes, from its
# unpacked layer, on no base image (FROM scratch). The binary is static; the layer holds it,
# /etc/passwd and /etc/group with 65532, and an empty /tmp (docs/operations.md, "Install").
#
#   cargo xtask image
#   docker build -f Dockerfile -t prodguard:0.1.0 "$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/image/rootfs"
#
# `cargo xtask image` needs no engine and gives the same digest on every build; this file is
# only a convenience.
FROM scratch
COPY . /
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/prodguard"]
CMD ["serve"]
