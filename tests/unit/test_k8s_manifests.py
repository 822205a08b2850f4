"""deploy/k8s/ cannot rot: every manifest passes the Kubernetes schemas shipped with
kubernetes-validate (offline, strict: unknown fields fail), the ConfigMap's expertmux.yaml loads
as this version's config, and every EXPERTMUX_* variable the pods set is a real setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import load_config
from core.settings import Settings

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def _docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_passes_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_rejects_a_broken_manifest():
    (_, deployment), = [(p, d) for p, d in _docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "expertmux"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_proxy_pods_read_real_settings_probe_healthz_and_take_secrets(tmp_path):
    (_, deployment), = [(p, d) for p, d in _docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "expertmux"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    fields = {f"EXPERTMUX_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    secrets = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"EXPERTMUX_ADMIN_TOKEN", "EXPERTMUX_KEY_HASH_SECRET", "EXPERTMUX_DATABASE_URL"} <= secrets
    (_, secret), = [(p, d) for p, d in _docs() if d["kind"] == "Secret"]
    assert {env[n]["valueFrom"]["secretKeyRef"]["key"] for n in secrets} <= set(secret["stringData"])
    (_, cm), = [(p, d) for p, d in _docs() if d["kind"] == "ConfigMap"]
    cfg = tmp_path / "expertmux.yaml"
    cfg.write_text(cm["data"]["expertmux.yaml"])
    config = load_config(cfg)
    assert [e.name for e in config.experts] == ["llama-8b", "llama-70b"]
