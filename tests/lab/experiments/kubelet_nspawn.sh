#!/bin/bash
# Experiment: a kubelet running pods inside a systemd-nspawn lab machine on this
# box's cgroup v1 (hybrid) host. Findings: docs/kubelet-on-cgroup-v1.md.
#
#   kubelet_nspawn.sh up      boot the node, install containerd/runc/CNI, start kubelet
#   kubelet_nspawn.sh check   wait for the static pods, show crictl ps / logs
#   kubelet_nspawn.sh down    tear down: node, mounts, netns, cgroup sub-groups
#   kubelet_nspawn.sh all     up + check + down (exit code = check result)
#   kubelet_nspawn.sh sh CMD  run CMD inside the node
#
# Inputs (environment):
#   EXP       experiments dir (rootfs/, debs/, bin/crictl)   /root/.cache/provision/experiments
#   K8S_BIN   dir with a kubelet binary                      /tmp/k8sbuild/out
# The rootfs is the overlay's lower dir and is never modified.
# Everything runs in network namespaces this script creates; nothing touches the
# box's own network, and only our own cgroup sub-groups (pvexp/...) are created.
set -euo pipefail

EXP=${EXP:-/root/.cache/provision/experiments}
K8S_BIN=${K8S_BIN:-/tmp/k8sbuild/out}
ROOTFS=$EXP/rootfs
DEBS=$EXP/debs
CRICTL=${CRICTL:-$EXP/bin/crictl}
NAME=${NAME:-pvexp-k1}
WORK=$EXP/kubelet-nspawn/$NAME
LABNS=pvexp-lab
NODENS=$NAME
CGPARENT=pvexp
GATEWAY=10.254.77.1
ADDRESS=10.254.77.11
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
BUSYBOX_IMAGE=docker.io/library/busybox:1.35.0
HERE=$(cd "$(dirname "$0")" && pwd)

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

cgroup_dirs() {
  # every v1 hierarchy plus the (empty) cgroup2 one; symlinks are skipped
  local h
  for h in /sys/fs/cgroup/*; do
    [ -L "$h" ] && continue
    mountpoint -q "$h" && echo "$h"
  done
}

leader_pid() {
  local npid
  npid=$(cat "$WORK/nspawn.pid" 2>/dev/null) || return 1
  kill -0 "$npid" 2>/dev/null || return 1
  # nspawn's child is the node's PID 1 (systemd)
  pgrep -P "$npid" | head -1
}

in_node() {
  local pid
  pid=$(leader_pid)
  nsenter -t "$pid" -m -u -i -n -p -C -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"
}

write_node_files() {
  local m=$WORK/merged
  echo "$NAME" > "$m/etc/hostname"
  cat > "$m/etc/hosts" <<EOF
127.0.0.1 localhost
$ADDRESS $NAME
EOF
  # node network: systemd-networkd is not used; eth0 is configured from outside
  # Make cgroups writable inside the node before anything uses them (FINDINGS 3).
  install -D -m 0755 /dev/stdin "$m/usr/local/sbin/provision-cgroup-rw" <<'EOF'
#!/bin/sh
# Remount /sys/fs/cgroup and every hierarchy read-write. Inside the node's cgroup
# namespace a fresh mount shows only the node's own sub-tree.
set -e
grep -q ' /sys/fs/cgroup tmpfs ro' /proc/self/mounts && mount -o remount,rw /sys/fs/cgroup
awk '$2 ~ "^/sys/fs/cgroup/" && ($3 == "cgroup" || $3 == "cgroup2") {print $2, $3, $4}' \
  /proc/self/mounts > /run/provision-cgroup-mounts
while read -r mp type opts; do
  ctrl=$(echo "$opts" | tr , '\n' | grep -vxE 'rw|ro|nosuid|nodev|noexec|relatime|noatime|nsdelegate|memory_recursiveprot|clone_children' | paste -sd, -)
  umount -l "$mp"
  if [ "$type" = cgroup2 ]; then
    mount -t cgroup2 -o rw,nosuid,nodev,noexec cgroup2 "$mp"
  else
    mount -t cgroup -o "rw,nosuid,nodev,noexec,$ctrl" cgroup "$mp"
  fi
done < /run/provision-cgroup-mounts
# cgroupRoot=/kubelet must exist in every hierarchy before the kubelet starts
# (kind's entrypoint does the same); cpuset children start empty: copy.
for mp in $(awk '{print $1}' /run/provision-cgroup-mounts); do
  mkdir -p "$mp/kubelet"
  if [ -f "$mp/cpuset.cpus" ]; then
    cat "$mp/cpuset.cpus" > "$mp/kubelet/cpuset.cpus"
    cat "$mp/cpuset.mems" > "$mp/kubelet/cpuset.mems"
  fi
done
# The kubelet sets vm.overcommit_memory, vm.panic_on_oom, kernel.panic and
# kernel.panic_on_oops when they differ (protectKernelDefaults=false) and fails
# when it cannot. /proc/sys is writable here and those are the shared box's
# kernel settings: show the kubelet the values it wants through read-only
# files bound over them, so it never writes.
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1; do
  key=${kv%=*}; f=/run/provision-sysctl/$(echo "$key" | tr / .)
  mkdir -p /run/provision-sysctl
  echo "${kv#*=}" > "$f"
  mountpoint -q "/proc/sys/$key" || mount --bind "$f" "/proc/sys/$key"
  mount -o remount,bind,ro "/proc/sys/$key"
done
EOF
  cat > "$m/etc/systemd/system/provision-cgroup-rw.service" <<'EOF'
[Unit]
Description=Make cgroup hierarchies writable for containerd and the kubelet
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target containerd.service kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/provision-cgroup-rw

[Install]
WantedBy=sysinit.target
EOF
  mkdir -p "$m/etc/systemd/system/sysinit.target.wants"
  ln -sf ../provision-cgroup-rw.service "$m/etc/systemd/system/sysinit.target.wants/provision-cgroup-rw.service"
  # /proc/sys is writable (SYSTEMD_NSPAWN_API_VFS_WRITABLE=1) and kernel.* / vm.*
  # are the shared box's: never let the node's systemd apply sysctl.d there.
  ln -sf /dev/null "$m/etc/systemd/system/systemd-sysctl.service"
  # no policy-rc.d: let the debs start their services under the node's systemd

  mkdir -p "$m/root/debs" "$m/root/images" "$m/etc/kubernetes/manifests" "$m/etc/containerd" "$m/etc/cni/net.d"
  cp "$DEBS"/*.deb "$m/root/debs/"
  rm -f "$m"/root/debs/busybox-static_*.deb
  install -m 0755 "$K8S_BIN/kubelet" "$m/usr/local/bin/kubelet"
  install -m 0755 "$CRICTL" "$m/usr/local/bin/crictl"
  cp "$WORK/images/"*.tar "$m/root/images/"

  cat > "$m/etc/crictl.yaml" <<'EOF'
runtime-endpoint: unix:///run/containerd/containerd.sock
image-endpoint: unix:///run/containerd/containerd.sock
timeout: 10
EOF
  cat > "$m/etc/containerd/config.toml" <<EOF
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # The box's bounding set has no CAP_SYS_RESOURCE (0x1fffeffffff: bit 24 off),
  # so nothing may lower oom_score_adj: runc failed "nsexec: failed to update
  # /proc/self/oom_score_adj: Permission denied" for the sandbox's -998. Clamp to
  # containerd's own score instead (what rootless/kind-in-userns setups use).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # host is cgroup v1 and PID 1 of the box is not systemd: cgroupfs driver
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "/etc/containerd/certs.d"
EOF
  cat > "$m/etc/cni/net.d/10-bridge.conflist" <<'EOF'
{
  "cniVersion": "0.4.0",
  "name": "pvexp",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat > "$m/etc/kubernetes/kubelet.yaml" <<'EOF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host: kubelets >= 1.35 refuse v1 unless told otherwise
failCgroupV1: false
# the box's PID 1 is not systemd and the node sees v1: cgroupfs, same as containerd
cgroupDriver: cgroupfs
# kind does this: a root of our own under the node's cgroup namespace
cgroupRoot: /kubelet
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
staticPodPath: /etc/kubernetes/manifests
# the node's filesystems are the box's: never evict because the box is full
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
imageGCHighThresholdPercent: 100
failSwapOn: false
# standalone: no API server, local-only endpoints
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: 127.0.0.1
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
clusterDomain: cluster.local
# no CAP_SYS_RESOURCE in the box: -999 cannot be set (harmless warning otherwise)
oomScoreAdj: 0
EOF
  cat > "$m/etc/systemd/system/kubelet.service" <<'EOF'
[Unit]
Description=kubelet (standalone experiment)
Wants=containerd.service
After=containerd.service provision-cgroup-rw.service

[Service]
ExecStart=/usr/local/bin/kubelet --config=/etc/kubernetes/kubelet.yaml --v=2
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
  # two static pods: one on the pod network (bridge CNI), one on the host network
  cat > "$WORK/hello.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: default}
spec:
  containers:
  - name: hello
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from a kubelet pod in nspawn on cgroup v1; ip -4 addr show eth0 | grep inet; while true; do sleep 3600; done"]
EOF
  cat > "$WORK/hello-hostnet.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: hello-hostnet, namespace: default}
spec:
  hostNetwork: true
  containers:
  - name: hello
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo hello from the host network of \$(hostname); while true; do sleep 3600; done"]
EOF
}

up() {
  [ -f "$EXP/debootstrap.time" ] || { log "rootfs not finished"; exit 1; }
  [ -x "$K8S_BIN/kubelet" ] || { log "no kubelet in $K8S_BIN"; exit 1; }
  mkdir -p "$WORK"/{upper,work,merged,containerd,kubelet,images}

  log "images: pause and busybox as OCI layout tars"
  if [ ! -x "$EXP/busybox" ]; then
    local tmp; tmp=$(mktemp -d)
    dpkg-deb -x "$(ls "$DEBS"/busybox-static_*.deb | head -1)" "$tmp"
    install -m 0755 "$tmp/bin/busybox" "$EXP/busybox"
    rm -rf "$tmp"
  fi
  python3 "$HERE/oci_busybox.py" --pause "$EXP/busybox" "$WORK/images/pause.tar" "$PAUSE_IMAGE"
  python3 "$HERE/oci_busybox.py" "$EXP/busybox" "$WORK/images/busybox.tar" "$BUSYBOX_IMAGE"

  log "network namespaces $LABNS (bridge, gateway $GATEWAY) and $NODENS ($ADDRESS)"
  ip netns add "$LABNS"
  ip netns add "$NODENS"
  ip -n "$LABNS" link add br-lab type bridge
  ip -n "$LABNS" addr add "$GATEWAY/24" dev br-lab
  ip -n "$LABNS" link set br-lab up
  ip -n "$LABNS" link set lo up
  ip -n "$LABNS" link add "v-$NAME" type veth peer name eth0 netns "$NODENS"
  ip -n "$LABNS" link set "v-$NAME" master br-lab up
  ip -n "$NODENS" addr add "$ADDRESS/24" dev eth0
  ip -n "$NODENS" link set eth0 up
  ip -n "$NODENS" link set lo up
  ip -n "$NODENS" route add default via "$GATEWAY"

  log "overlay: lower $ROOTFS"
  mount -t overlay overlay \
    -o "lowerdir=$ROOTFS,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/merged"
  write_node_files

  log "cgroup sub-groups $CGPARENT/$NAME in every hierarchy"
  local h
  for h in $(cgroup_dirs); do
    mkdir -p "$h/$CGPARENT/$NAME"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$h/$CGPARENT/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/$CGPARENT/cpuset.mems"
      cat "$h/cpuset.cpus" > "$h/$CGPARENT/$NAME/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/$CGPARENT/$NAME/cpuset.mems"
    fi
  done

  log "boot $NAME"
  local procs=""
  for h in $(cgroup_dirs); do procs="$procs $h/$CGPARENT/$NAME/cgroup.procs"; done
  # shellcheck disable=SC2016
  setsid sh -c 'for f in $0; do echo $$ > "$f"; done; exec "$@"' "$procs" \
    env SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 \
    systemd-nspawn -D "$WORK/merged" --boot --register=no --keep-unit -M "$NAME" \
      --network-namespace-path="/run/netns/$NODENS" \
      --capability=all \
      --system-call-filter='keyctl add_key request_key' \
      --bind=/dev/kmsg \
      --bind="$WORK/containerd:/var/lib/containerd" \
      --bind="$WORK/kubelet:/var/lib/kubelet" \
      --resolv-conf=off --timezone=off --link-journal=no \
      > "$WORK/nspawn.log" 2>&1 < /dev/null &
  echo $! > "$WORK/nspawn.pid"

  local t0=$SECONDS state=""
  while [ $((SECONDS - t0)) -lt 60 ]; do
    kill -0 "$(cat "$WORK/nspawn.pid")" 2>/dev/null || { log "nspawn exited"; tail -5 "$WORK/nspawn.log"; exit 1; }
    if leader_pid >/dev/null 2>&1; then
      state=$(in_node systemctl is-system-running 2>/dev/null || true)
      case $state in running|degraded) break ;; esac
    fi
    sleep 1
  done
  log "boot: $state after $((SECONDS - t0)) s"
  in_node systemctl --failed --no-legend || true
  in_node cat /proc/self/cgroup

  log "install containerd, runc, CNI plugins from .debs"
  t0=$SECONDS
  in_node sh -c 'dpkg -i --force-confdef --force-confold /root/debs/*.deb' > "$WORK/dpkg.log" 2>&1 || { tail -20 "$WORK/dpkg.log"; exit 1; }
  log "dpkg: $((SECONDS - t0)) s"
  in_node systemctl restart containerd
  in_node ctr -n k8s.io images import /root/images/pause.tar
  in_node ctr -n k8s.io images import /root/images/busybox.tar
  in_node crictl images
  in_node systemctl enable --now kubelet
  cp "$WORK/hello.yaml" "$WORK/hello-hostnet.yaml" "$WORK/merged/etc/kubernetes/manifests/"
  log "up done"
}

check() {
  local t0=$SECONDS ok=""
  while [ $((SECONDS - t0)) -lt 120 ]; do
    if [ "$(in_node crictl ps --state running -q 2>/dev/null | wc -l)" -ge 2 ]; then ok=1; break; fi
    sleep 2
  done
  log "pods running: ${ok:-no} after $((SECONDS - t0)) s"
  in_node crictl pods || true
  in_node crictl ps -a || true
  local c
  for c in $(in_node crictl ps -a -q 2>/dev/null); do
    echo "--- logs of $c"
    in_node crictl logs "$c" || true
  done
  echo "--- kubelet cgroups (host view)"
  find /sys/fs/cgroup/memory/$CGPARENT/$NAME -maxdepth 4 -type d | head -20
  echo "--- kubelet errors"
  in_node journalctl -u kubelet --no-pager -p err | tail -20 || true
  [ -n "$ok" ]
}

down() {
  local npid lpid t0
  if npid=$(cat "$WORK/nspawn.pid" 2>/dev/null) && kill -0 "$npid" 2>/dev/null; then
    lpid=$(leader_pid || true)
    # Pod processes that are PID 1 of their own namespace (busybox sh) ignore the
    # SIGTERM systemd-shutdown broadcasts, and it then waits 90 s: remove pods first.
    if [ -n "$lpid" ]; then
      timeout 20 nsenter -t "$lpid" -m -u -i -n -p -C -- sh -c \
        'systemctl stop kubelet; crictl rmp -fa >/dev/null 2>&1' || true
    fi
    log "stop $NAME (SIGTERM to nspawn $npid)"
    t0=$SECONDS
    kill -TERM "$npid"
    while kill -0 "$npid" 2>/dev/null && [ $((SECONDS - t0)) -lt 30 ]; do sleep 1; done
    if kill -0 "$npid" 2>/dev/null; then
      # killing nspawn alone leaves the node's PID 1 running; killing PID 1 of
      # the node's PID namespace takes every process of the node with it
      log "still running: SIGKILL to the node's PID 1 ($lpid)"
      [ -n "$lpid" ] && kill -KILL "$lpid" 2>/dev/null || true
      sleep 2
      kill -KILL "$npid" 2>/dev/null || true
    fi
    log "stopped after $((SECONDS - t0)) s"
  fi
  rm -f "$WORK/nspawn.pid"
  # kubelet mounts (tmpfs volumes, containerd shm) left under our dirs
  local mp
  for mp in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount -l "$mp" 2>/dev/null || true
  done
  rm -rf "/run/systemd/nspawn/propagate/$NAME"
  ip netns del "$NODENS" 2>/dev/null || true
  ip netns del "$LABNS" 2>/dev/null || true
  local h
  for h in $(cgroup_dirs); do
    [ -d "$h/$CGPARENT" ] || continue
    find "$h/$CGPARENT" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$h/$CGPARENT" ] && log "cgroup left: $h/$CGPARENT"
  done
  rm -rf "$WORK"
  log "down done"
}

case ${1:-} in
  up) up ;;
  check) check ;;
  down) down ;;
  sh) shift; in_node "$@" ;;
  all) trap down EXIT; up; check ;;
  *) echo "usage: $0 up|check|down|all|sh CMD" >&2; exit 2 ;;
esac
