"""provision.nodefacts: the node facts of roles/common/defaults/main.yml, typed, and the
one place they are written down."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from provision import nodefacts
from provision.nodefacts import FactsFile

ROOT = Path(__file__).resolve().parents[2]
FACTS_FILE = ROOT / "roles" / "common" / "defaults" / "main.yml"
RAW = yaml.safe_load(FACTS_FILE.read_text())


def test_the_roles_facts_file_is_the_one_loaded():
    assert nodefacts.FACTS_FILE.resolve() == FACTS_FILE.resolve()


def test_values_and_types():
    assert nodefacts.ADMIN_KUBECONFIG == RAW["common_admin_kubeconfig"] \
        == "/etc/kubernetes/admin.conf"
    assert nodefacts.ETCD_CLIENT_PORT == 2379 and nodefacts.ETCD_PEER_PORT == 2380
    assert nodefacts.ETCD_PKI_DIR == "/etc/etcd/pki"
    assert nodefacts.STAGE_MARKER_DIR == "/var/lib/provision/stages"
    assert nodefacts.KUBEADM_CONFIG_DIR == "/etc/kubernetes/provision"
    assert nodefacts.HAPROXY_API_BACKEND == "kube-apiserver"
    for name in ("ETCD_CLIENT_PORT", "ETCD_PEER_PORT", "HAPROXY_STATS_PORT"):
        value = getattr(nodefacts, name)
        assert type(value) is int, name
    for name in ("ADMIN_KUBECONFIG", "KUBELET_KUBECONFIG", "API_SERVER_MANIFEST", "ETCD_PKI_DIR",
                 "ETCD_CA_CERT", "ETCD_CLIENT_CERT", "ETCD_CLIENT_KEY", "ETCD_DATA_DIR",
                 "HAPROXY_CONFIG", "STAGE_MARKER_DIR", "KUBEADM_CONFIG_DIR"):
        value = getattr(nodefacts, name)
        assert isinstance(value, str) and value.startswith("/"), name
    assert tuple(RAW["common_etcdctl_tls_args"]) == nodefacts.ETCDCTL_TLS_ARGS


def test_every_fact_of_the_file_is_a_constant():
    """common_<name> is nodefacts.<NAME>; the file has no fact Python cannot see."""
    for key, value in RAW.items():
        constant = key.removeprefix("common_").upper()
        assert hasattr(nodefacts, constant), f"{key}: no nodefacts.{constant}"
        assert getattr(nodefacts, constant) == (tuple(value) if isinstance(value, list)
                                                 else value), key


def test_files_sit_in_their_directories():
    for path in (nodefacts.ETCD_CA_CERT, nodefacts.ETCD_CLIENT_CERT, nodefacts.ETCD_CLIENT_KEY):
        assert Path(path).parent == Path(nodefacts.ETCD_PKI_DIR)
    assert Path(nodefacts.API_SERVER_MANIFEST).parent == Path(nodefacts.STATIC_POD_DIR)


def test_etcdctl_is_built_from_the_roles_tls_arguments():
    command = nodefacts.etcdctl(["https://10.250.0.11:2379", "https://10.250.0.12:2379"], "10s")
    assert shlex.split(command) == [
        "ETCDCTL_API=3", "etcdctl", "--endpoints=https://10.250.0.11:2379,https://10.250.0.12:2379",
        *RAW["common_etcdctl_tls_args"], "--command-timeout=10s",
        f"--dial-timeout={RAW['common_etcdctl_dial_timeout']}"]
    assert shlex.split(nodefacts.etcdctl(["https://127.0.0.1:2379"]))[-2] == "--command-timeout=5s"


@pytest.mark.parametrize("endpoints", ["https://10.250.0.11:2379", []])
def test_etcdctl_wants_a_list_of_endpoints(endpoints):
    with pytest.raises(ValueError, match="list of endpoint URLs"):
        nodefacts.etcdctl(endpoints)


def test_etcd_urls():
    assert nodefacts.etcd_client_url("10.250.0.11") == "https://10.250.0.11:2379"
    assert nodefacts.etcd_peer_url("10.250.0.11") == "https://10.250.0.11:2380"
    assert nodefacts.etcd_client_url("fd00::11") == "https://[fd00::11]:2379"


# ------------------------------------------------------------------ a broken facts file
def broken(tmp_path: Path, **changes) -> FactsFile:
    data = dict(RAW)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = tmp_path / "main.yml"
    path.write_text(yaml.safe_dump(data))
    return FactsFile(path)


def tls_args(facts: FactsFile) -> tuple[str, ...]:
    return facts.etcdctl_tls_args("etcdctl_tls_args", facts.text("etcd_ca_cert"),
                                  facts.text("etcd_client_cert"), facts.text("etcd_client_key"))


@pytest.mark.parametrize("changes,read,message", [
    ({"common_admin_kubeconfig": None}, lambda f: f.text("admin_kubeconfig"),
     "node fact common_admin_kubeconfig is missing"),
    ({"common_etcd_client_port": "2379"}, lambda f: f.number("etcd_client_port"),
     "common_etcd_client_port must be an integer"),
    ({"common_etcd_peer_port": True}, lambda f: f.number("etcd_peer_port"),
     "common_etcd_peer_port must be an integer"),
    ({"common_etcd_pki_dir": ""}, lambda f: f.text("etcd_pki_dir"),
     "common_etcd_pki_dir must be a non-empty string"),
    ({"common_etcd_data_dir": 7}, lambda f: f.text("etcd_data_dir"),
     "common_etcd_data_dir must be a non-empty string"),
    ({"common_stage_marker_dir": "{{ provision_state }}/stages"},
     lambda f: f.text("stage_marker_dir"), "common_stage_marker_dir is a Jinja expression"),
    ({"common_etcdctl_tls_args": "--cacert=/x"}, tls_args,
     "common_etcdctl_tls_args must be a list"),
    ({"common_etcdctl_tls_args": ["--cacert={{ common_etcd_ca_cert }}", "--cert=/c", "--key=/k"]},
     tls_args, "common_etcdctl_tls_args is a Jinja expression"),
    ({"common_etcd_ca_cert": "/etc/etcd/tls/ca.crt"}, tls_args, "common_etcdctl_tls_args is"),
    ({"common_etcdctl_tls_args": RAW["common_etcdctl_tls_args"] + ["--insecure-skip-tls-verify"]},
     tls_args, "expected"),
])
def test_a_wrong_fact_is_refused_naming_the_key_and_the_file(tmp_path, changes, read, message):
    facts = broken(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        read(facts)
    assert message in str(err.value) and str(facts.path) in str(err.value)


@pytest.mark.parametrize("text", ["- a list\n", "key: [unclosed\n"])
def test_a_facts_file_that_is_no_mapping_is_refused(tmp_path, text):
    path = tmp_path / "main.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        FactsFile(path)


def test_a_missing_facts_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        FactsFile(tmp_path / "absent.yml")


# ------------------------------------------------------------------ written once
# Fact values whose text also means something else: the haproxy backend is named after
# the kube-apiserver process (pgrep, static pod names); "3s" is any timeout.
NOT_SEARCHED = {"common_haproxy_api_backend": "also the API server's process and pod name",
                "common_etcdctl_dial_timeout": "any 3-second timeout"}
# (file relative to the repository, fact value): why the value may stand there.
ALLOWED: dict[tuple[str, str], str] = {}


def searched_values() -> list[str]:
    values = ["/etc/kubernetes/admin.conf", "2379", "2380", "/etc/etcd/pki",
              "/var/lib/provision/stages"]  # the list, then every other fact
    for key, value in RAW.items():
        if key in NOT_SEARCHED:
            continue
        for v in value if isinstance(value, list) else [value]:
            if str(v) not in values:
                values.append(str(v))
    return values


def test_node_facts_are_written_only_in_the_common_role():
    """The roles and the stage checks name the facts through common_* variables and
    provision.nodefacts; the literal values stand only in the facts file."""
    files = [p for top in ("roles", "provision/checks") for p in (ROOT / top).rglob("*")
             if p.is_file() and p.resolve() != FACTS_FILE.resolve()
             and "__pycache__" not in p.parts]
    assert len(files) > 40
    found = []
    for value in searched_values():
        pattern = re.compile(rf"(?<![\w.]){re.escape(value)}(?![\w])" if value.isdigit()
                             else re.escape(value))
        for path in files:
            rel = str(path.relative_to(ROOT))
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line) and (rel, value) not in ALLOWED:
                    found.append(f"{rel}:{number}: {value}: {line.strip()}")
    assert not found, "node facts written out beside roles/common/defaults/main.yml:\n" + \
        "\n".join(found)
