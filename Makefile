# provision: the two commands a fresh box needs are `make up` and `make test`.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV      ?= .venv
PY        := $(VENV)/bin/python
PROVISION := $(VENV)/bin/provision
INVENTORY ?= inventories/local.yaml
PYTEST_ARGS ?=

# Debian packages the provisioner host needs (lab machines, artifact build and serving).
# The slow tier adds libvirt and qemu (TCG virtual machines); bare metal adds dnsmasq
# (DHCP, TFTP), iPXE, ipmitool and zstd (the node image).
HOST_PACKAGES := systemd-container debootstrap mmdebstrap iproute2 iptables socat \
	openssh-client nginx-light docker-registry dpkg-dev apt-utils busybox-static \
	ca-certificates curl python3-venv \
	libvirt-daemon-system qemu-system-x86 qemu-utils ipxe-qemu libvirt-dev pkg-config \
	dnsmasq-base ipxe ipmitool zstd

.PHONY: deps host-deps venv artifacts up test test-unit test-lab lint bench clean

deps: host-deps venv

host-deps:
	missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q '^install ok installed' || echo $$p; done)
	if [ -n "$$missing" ]; then
		echo "installing host packages: $$missing"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing
	fi
	command -v go >/dev/null || { echo "error: the Go toolchain (>= 1.25) is needed to build Kubernetes offline; install it and retry" >&2; exit 2; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,libvirt]'
	touch $@

artifacts: deps
	$(PROVISION) artifacts build -i $(INVENTORY)

up: deps artifacts
	$(PROVISION) up -i $(INVENTORY)
	$(PROVISION) kubeconfig -i $(INVENTORY)
	# the pinned kubectl (built with the cluster's artifacts) beside provision in the venv
	ln -sf "$$($(PY) -c 'import sys; from provision.artifacts import build; from provision.inventory import load_inventory; print(build(load_inventory(sys.argv[1]).kubernetes.version).binaries["kubectl"])' $(INVENTORY))" $(VENV)/bin/kubectl
	kubeconfig=$$($(PROVISION) kubeconfig -i $(INVENTORY) -o json | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["kubeconfig"])')
	echo
	echo "The cluster is up. Use it with:"
	echo "  export KUBECONFIG=$$kubeconfig"
	echo "  $(VENV)/bin/kubectl get nodes"
	echo "Shell on a node: $(PROVISION) ssh -i $(INVENTORY) cp-1"
	echo "Tear it down:    $(PROVISION) destroy -i $(INVENTORY) --yes"

test: deps
	# the times bracket pytest: a CI job that outlives its summary line shows where
	echo "make test: pytest starts at $$(date -u +%T)"
	rc=0; $(PY) -m pytest tests $(PYTEST_ARGS) || rc=$$?
	echo "make test: pytest ended at $$(date -u +%T) with exit $$rc"
	exit $$rc

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-lab: deps
	$(PY) -m pytest tests/lab $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check provision tests bench
	$(VENV)/bin/mypy provision

bench: deps
	mkdir -p bench/results
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b | tee bench/results/$$(basename $$b .py).json; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
