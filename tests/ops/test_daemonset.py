"""The Kubernetes DaemonSet manifest: its embedded config is valid, and it grants what
vgpumon needs and no more."""

from __future__ import annotations

import yaml

from tests.harness import REPO
from vgpumon.config.loading import parse_config

MANIFEST = REPO / "config" / "kubernetes" / "daemonset.yaml"


def documents():
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_embedded_config_is_valid_and_reads_the_host_proc():
    config = parse_config(documents()["ConfigMap"]["data"]["vgpumon.yaml"], source="configmap")
    assert config.procfs == "/host/proc"
    assert config.rootfs == "/host"
    assert config.links[0].view == "server"
    # Ollama's log: its container's log file, found under the host's / (rootfs)
    assert config.ollama.log.container == "auto"
    assert config.ollama.log.pods_dir == "/var/log/pods"


def test_daemonset_shares_the_host_pid_namespace_and_mounts_proc_read_only():
    pod = documents()["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/host/proc"]["readOnly"] is True
    assert mounts["/host"]["readOnly"] is True  # /host/var/log/pods: the pods' log files
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["host-proc"]["hostPath"]["path"] == "/proc"


def test_daemonset_capabilities_are_only_the_needed_ones():
    (container,) = documents()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert sorted(security["capabilities"]["add"]) == ["DAC_READ_SEARCH", "SYSLOG", "SYS_PTRACE"]
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert "limits" in container["resources"]
