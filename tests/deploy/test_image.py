"""The container image that `cargo xtask image` builds, checked as a registry, a node and a user
would see it. scripts/deploy-tests.sh builds it twice (PRODGUARD_IMAGE_DIR and
PRODGUARD_IMAGE_DIR_AGAIN) before running these.

- Its config: user 65532, the entrypoint, the exposed ports, the OCI labels.
- Its layer: the binary (static), passwd and group, nothing else: no shell, no package manager.
- Two builds give the same digest and the same tarball, byte for byte.
- skopeo reads the OCI layout, and the tarball both as a docker-archive and as an oci-archive.
- The image's own root file system, unpacked from the tarball, runs `serve` as uid 65532,
  read-only, with nothing from the host but the certificate directory a Secret would mount:
  it answers /healthz and a review over TLS, and `check` judges examples/openg2p as documented.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = Path(os.environ.get("PRODGUARD_IMAGE_DIR", ""))
AGAIN_DIR = Path(os.environ.get("PRODGUARD_IMAGE_DIR_AGAIN", ""))
VERSION = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text()).group(1)
TARBALL = f"prodguard-{VERSION}-amd64.tar"
BINARY = "usr/local/bin/prodguard"


@pytest.fixture(scope="module", autouse=True)
def built():
    for name, directory in (("PRODGUARD_IMAGE_DIR", IMAGE_DIR), ("PRODGUARD_IMAGE_DIR_AGAIN", AGAIN_DIR)):
        assert str(directory) and (directory / TARBALL).exists(), (
            f"{name} names no built image ({directory}): run scripts/deploy-tests.sh"
        )


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, f"blob {digest} does not hash to its name"
    return data


def manifest_and_config(layout: Path) -> tuple[dict, dict]:
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]))
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    return manifest, config


def layer_members(layout: Path) -> tuple[list[tarfile.TarInfo], bytes]:
    manifest, config = manifest_and_config(layout)
    assert len(manifest["layers"]) == 1
    compressed = blob(layout, manifest["layers"][0]["digest"])
    raw = gzip.decompress(compressed)
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return tar.getmembers(), raw


def test_the_config_runs_prodguard_as_65532_on_its_ports():
    _, config = manifest_and_config(IMAGE_DIR / "oci")
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    run = config["config"]
    assert run["User"] == "65532:65532"
    assert run["Entrypoint"] == ["/usr/local/bin/prodguard"]
    assert run["Cmd"] == ["serve"]
    assert run["ExposedPorts"] == {"8443/tcp": {}, "9090/tcp": {}}
    labels = run["Labels"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert labels["org.opencontainers.image.revision"].startswith(head.stdout.strip())
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")


def test_the_layer_holds_the_static_binary_and_the_user_and_nothing_else():
    members, raw = layer_members(IMAGE_DIR / "oci")
    names = [m.name.rstrip("/") for m in members]
    assert names == sorted(names), "entries are not in path order"
    assert set(names) == {
        "etc", "etc/group", "etc/nsswitch.conf", "etc/passwd", "tmp",
        "usr", "usr/local", "usr/local/bin", BINARY,
    }, names
    # No shell, no package manager, no other program: the binary is the only executable file.
    executables = [m.name for m in members if m.isfile() and m.mode & 0o111]
    assert executables == [BINARY]
    for forbidden in ("bin/sh", "bin/bash", "bin/busybox", "usr/bin/apt", "usr/bin/dpkg", "sbin/apk", "usr/bin/rpm"):
        assert forbidden not in names
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert len({m.mtime for m in members}) == 1, "timestamps are not fixed"
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
        group = tar.extractfile("etc/group").read().decode()
        elf = tar.extractfile(BINARY).read()
    assert "nonroot:x:65532:65532:" in passwd and "nonroot:x:65532:" in group
    # A static binary: no program interpreter (PT_INTERP), so no loader or library is needed.
    assert elf[:4] == b"\x7fELF"
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    kinds = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 1 in kinds and 3 not in kinds, kinds


def test_two_builds_give_the_same_digest_and_tarball():
    one = (IMAGE_DIR / "digest").read_text().strip()
    two = (AGAIN_DIR / "digest").read_text().strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", one)
    assert one == two
    assert (IMAGE_DIR / TARBALL).read_bytes() == (AGAIN_DIR / TARBALL).read_bytes()
    index = json.loads((IMAGE_DIR / "oci" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == one


def test_the_compressed_image_is_under_15_mb():
    manifest, _ = manifest_and_config(IMAGE_DIR / "oci")
    size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
    print(f"compressed image: {size} bytes")
    assert size < 15_000_000, size


def test_the_tarball_is_a_docker_save_and_an_oci_archive():
    with tarfile.open(IMAGE_DIR / TARBALL) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    saved = json.loads(files["manifest.json"])
    assert saved[0]["RepoTags"] == [f"prodguard:{VERSION}"]
    for path in [saved[0]["Config"], *saved[0]["Layers"]]:
        assert path.removeprefix("blobs/sha256/") == hashlib.sha256(files[path]).hexdigest()
    index = json.loads(files["index.json"])
    annotations = index["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == f"docker.io/library/prodguard:{VERSION}"
    assert annotations["org.opencontainers.image.ref.name"] == VERSION
    # skopeo (containers/image, as podman and CRI-O read images) reads all three forms, and a
    # copy out of the docker-archive reads every layer through, checking its digest.
    digest = (IMAGE_DIR / "digest").read_text().strip()
    for source in (f"oci:{IMAGE_DIR / 'oci'}:{VERSION}", f"oci-archive:{IMAGE_DIR / TARBALL}"):
        inspected = json.loads(subprocess.run(["skopeo", "inspect", source], capture_output=True, text=True, check=True).stdout)
        assert inspected["Digest"] == digest, source
    docker = json.loads(
        subprocess.run(["skopeo", "inspect", "--config", f"docker-archive:{IMAGE_DIR / TARBALL}"], capture_output=True, text=True, check=True).stdout
    )
    assert docker["config"]["User"] == "65532:65532"
    copied = subprocess.run(
        ["skopeo", "copy", "--quiet", f"docker-archive:{IMAGE_DIR / TARBALL}", f"dir:{AGAIN_DIR / 'copied'}"],
        capture_output=True, text=True,
    )
    assert copied.returncode == 0, copied.stderr


# --- the image's own root file system, run ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_prodguard() -> str:
    path = os.environ.get("PRODGUARD_BIN")
    assert path and Path(path).exists(), "PRODGUARD_BIN names no prodguard binary (scripts/deploy-tests.sh sets it)"
    return path


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    """The layer of the air-gap tarball, unpacked, with the mount points a pod's volumes use."""
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)
    with tarfile.open(IMAGE_DIR / TARBALL) as tar:
        saved = json.loads(tar.extractfile("manifest.json").read())
        layer = tar.extractfile(saved[0]["Layers"][0]).read()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        tar.extractall(root, filter="tar")
    for mount_point in ("certs", "input"):
        (root / mount_point).mkdir()
    return root


def contained(root: Path, mounts: dict[str, Path], argv: list[str]) -> list[str]:
    """The command line that runs argv inside root: a mount namespace of its own, root mounted
    read-only, the given host directories mounted read-only (as a pod's volumes), no /proc, no
    /dev, an empty environment, uid and gid 65532."""
    script = ["set -e", f'mount --bind "{root}" "{root}"', f'mount -o remount,bind,ro "{root}"']
    for inside, outside in mounts.items():
        script.append(f'mount --bind "{outside}" "{root}/{inside}"')
        script.append(f'mount -o remount,bind,ro "{root}/{inside}"')
    chroot = shutil.which("chroot")
    assert chroot, "chroot is not installed"
    script.append(f'exec env -i "{chroot}" --userspec=65532:65532 "$0" "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "; ".join(script), str(root), *argv]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    directory.chmod(0o755)
    subprocess.run(
        [host_prodguard(), "certs", "--service", "prodguard", "--namespace", "prodguard", "--san", "127.0.0.1", "--out-dir", str(directory)],
        capture_output=True, check=True,
    )
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (directory / name).chmod(0o644)
    return directory


def status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].split()
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_the_root_file_system_serves_over_tls_as_65532_read_only(rootfs, certs):
    port = free_port()
    argv = [
        "/usr/local/bin/prodguard", "serve", f"--addr=127.0.0.1:{port}",
        "--tls-cert=/certs/tls.crt", "--tls-key=/certs/tls.key",
        "--metrics-addr=off", "--audit-interval=off",
    ]
    server = subprocess.Popen(contained(rootfs, {"certs": certs}, argv), env={}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "prodguard in the image did not answer /healthz within 20 s"
                time.sleep(0.2)
        # The process is prodguard itself, as 65532, and its root is read-only.
        assert Path(f"/proc/{server.pid}/exe").resolve().name == "prodguard"
        assert status_field(server.pid, "Uid") == ["65532"] * 4
        assert status_field(server.pid, "Gid") == ["65532"] * 4
        mounts = Path(f"/proc/{server.pid}/mountinfo").read_text().splitlines()
        # Mount points are shown relative to the process's root: its root is the last "/" mount.
        root_mount = [line for line in mounts if line.split()[4] == "/"]
        assert root_mount and "ro" in root_mount[-1].split()[5].split(","), mounts
        assert not [line for line in mounts if line.split()[4] in ("/proc", "/dev", "/sys")], mounts
        environ = Path(f"/proc/{server.pid}/environ").read_bytes()
        assert environ == b"", environ
        # A review: a Deployment of one replica is denied by min-replicas.
        review = {
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "image-test-1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "namespace": "openg2p", "name": "web", "operation": "CREATE",
                "userInfo": {"username": "dev"}, "dryRun": True,
                "object": {
                    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "openg2p"},
                    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                             "template": {"metadata": {"labels": {"app": "web"}},
                                          "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
                },
            },
        }
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/validate", data=json.dumps(review).encode(),
            headers={"content-type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            verdict = json.loads(answer.read())
        assert verdict["response"]["uid"] == "image-test-1"
        assert verdict["response"]["allowed"] is False
        assert "[min-replicas]" in verdict["response"]["status"]["message"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_check_in_the_image_judges_the_examples_as_documented(rootfs):
    examples = ROOT / "examples" / "openg2p"
    inside = subprocess.run(
        contained(rootfs, {"input": examples}, ["/usr/local/bin/prodguard", "check", "-f", "/input"]),
        env={}, capture_output=True, text=True,
    )
    # The README: patches, warnings and two denials, exit status 1.
    assert inside.returncode == 1, inside.stdout + inside.stderr
    outside = subprocess.run([host_prodguard(), "check", "-f", str(examples)], capture_output=True, text=True, cwd=ROOT)
    assert outside.returncode == 1
    # The same judgement as the test build's, file names aside.
    assert inside.stdout.replace("/input", "examples/openg2p") == outside.stdout.replace(str(examples), "examples/openg2p")
    assert inside.stdout.count("  DENY  ") == 2, inside.stdout


def test_the_dockerfile_needs_no_base_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = [line.split()[1] for line in dockerfile.splitlines() if line.upper().startswith("FROM ")]
    assert froms == ["scratch"], froms
    assert "USER 65532:65532" in dockerfile
    # Its context, the unpacked layer, is written beside the layout.
    assert (IMAGE_DIR / "rootfs" / BINARY).exists()
