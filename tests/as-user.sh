#!/usr/bin/env bash
# `make test` as root: the suite runs as an unprivileged user at umask 002, as batch-ast's users do
# (root bypasses every permission check, and its 022 umask hides what a group umask breaks).
#
#  - creates the group `batchast` and two users in it, `batchast-a` (runs the suite) and
#    `batchast-b` (the colleague of the two-user tests), idempotently;
#  - gives batchast-a, through sudo, exactly two things: tests/cluster-admin.sh as root (a test
#    cluster's administrator loses and restarts nodes) and any command as batchast-b;
#  - runs the tests marked root_only as root (the cluster scripts, and one smoke test at umask 022),
#    then every other test as batchast-a with umask 002. The SLURM daemons stay root's.
#
# Usage: bash tests/as-user.sh VENV_PYTHON [pytest args...]   (the Makefile passes its venv)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT_PY="$1"; shift
GROUP=batchast USER_A=batchast-a USER_B=batchast-b
WORK=/var/tmp/batch-ast-tests

[ "$(id -u)" = 0 ] || { echo "tests/as-user.sh runs as root (it creates the test users)" >&2; exit 2; }

getent group "$GROUP" >/dev/null || groupadd "$GROUP"
for user in "$USER_A" "$USER_B"; do
  id -u "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash -G "$GROUP" "$user"
  usermod -a -G "$GROUP" "$user"
done

if ! command -v sudo >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null 2>&1 || \
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null)
fi

# The users must read the checkout and run a Python: root's may live under /root (0700), and so
# may the clone. Where they cannot, they get a copy, and a venv of the system's Python.
SRC="$REPO"
if ! runuser -u "$USER_A" -- test -r "$REPO/pyproject.toml" || ! runuser -u "$USER_A" -- test -x "$REPO/tests"; then
  echo "as-user: $REPO is not readable by $USER_A: the tests run on a copy in $WORK/main"
  rm -rf "$WORK/main" "$WORK/shared"
  mkdir -p "$WORK/main"
  tar -C "$REPO" --exclude=./.venv --exclude=./.git -cf - . | tar -C "$WORK/main" -xf -
  [ -d "$REPO/../shared" ] && cp -a "$REPO/../shared" "$WORK/shared"
  chmod -R a+rX "$WORK"
  SRC="$WORK/main"
fi
PY="$ROOT_PY"
if [ "$SRC" != "$REPO" ] || ! runuser -u "$USER_A" -- "$ROOT_PY" -c "import batch_ast, torch" >/dev/null 2>&1; then
  VENV="$WORK/venv-$(printf %s "$SRC" | sha1sum | cut -c1-12)"  # one per checkout: it installs that one, editable
  BASE=/usr/bin/python3
  [ -x "$BASE" ] || BASE="$(command -v python3)"
  if [ ! -x "$VENV/bin/python" ] || [ "$SRC/pyproject.toml" -nt "$VENV/.installed" ] || \
      ! runuser -u "$USER_A" -- "$VENV/bin/python" -c "import batch_ast" >/dev/null 2>&1; then
    echo "as-user: a venv that $USER_A can run: $VENV (from $BASE)"
    rm -rf "$VENV"
    mkdir -p "$WORK"
    "$BASE" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if ! nvidia-smi -L >/dev/null 2>&1; then
      "$VENV/bin/python" -m pip install -q torch==2.13.0 || \
        "$VENV/bin/python" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    fi
    "$VENV/bin/python" -m pip install -q -e "$SRC[test]"
    touch "$VENV/.installed"
  fi
  chmod -R a+rX "$WORK"
  PY="$VENV/bin/python"
fi

ADMIN="$SRC/tests/cluster-admin.sh"
cat > /etc/sudoers.d/batch-ast-tests <<EOF
# written by batch-ast's tests/as-user.sh: the test user may administer the test cluster and act as its colleague
Defaults:$USER_A !requiretty
$USER_A ALL=(root) NOPASSWD: $ADMIN
$USER_A ALL=($USER_B) NOPASSWD: ALL
EOF
chmod 0440 /etc/sudoers.d/batch-ast-tests

# pytest exits 5 when a selection holds no test: the root pass may legitimately be empty
set +e
(cd "$SRC" && "$PY" -m pytest -ra -p no:cacheprovider -m root_only "$@")
rc=$?
set -e
[ "$rc" = 0 ] || [ "$rc" = 5 ] || exit "$rc"

KEEP="CI BATCH_AST_TEST_DEVICE BATCH_AST_SLURM_STATE"
ENVS=(HOME="$(getent passwd "$USER_A" | cut -d: -f6)" PATH="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
      LANG=C.UTF-8 BATCH_AST_TEST_USER_B="$USER_B" BATCH_AST_TEST_ADMIN="$ADMIN")
for name in $KEEP; do [ -n "${!name:-}" ] && ENVS+=("$name=${!name}"); done
cd /
exec runuser -u "$USER_A" -- env -i "${ENVS[@]}" bash -c \
  'umask 002; cd "$0" && exec "$1" -m pytest -ra --durations=12 -p no:cacheprovider -m "not root_only" "${@:2}"' "$SRC" "$PY" "$@"
